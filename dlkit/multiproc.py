"""The directory of prometheus-client's multiprocess mode, for the API (gunicorn's workers) and the RQ
workers (their work horses): each process writes its samples to files there, and a scrape sums them.

prometheus-client reads PROMETHEUS_MULTIPROC_DIR once, when it is first imported, so both functions run
before that; this module must never import it.
"""

from __future__ import annotations

import glob
import os
import tempfile

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def choose_directory(prefix: str) -> str:
    """PROMETHEUS_MULTIPROC_DIR, or a new temporary directory (put in the environment) when it is unset."""
    if VARIABLE not in os.environ:
        os.environ[VARIABLE] = tempfile.mkdtemp(prefix=prefix)
    return os.environ[VARIABLE]


def remove_previous_run(directory: str) -> None:
    """A previous run's files would be summed into this run's counters: start from zero. Only
    prometheus-client's own *.db files and the exemplar files (dlkit/exemplars.py) are removed, in
    case the variable points somewhere shared."""
    os.makedirs(directory, exist_ok=True)
    for pattern in ("*.db", "exemplars_*.json", "exemplars_*.tmp"):
        for path in glob.glob(os.path.join(directory, pattern)):
            os.remove(path)
