"""Metrics that the API and the workers both count: whoever applies a job's terminal transition counts
it (cancel in the API; completion and failures, a lost job's included, in the workers). A job reaches a
terminal status once, so the sum over every process counts each job once.

Import after the multiprocess directory is chosen (dlkit/multiproc.py).
"""

from __future__ import annotations

from prometheus_client import Counter

JOBS_FINISHED = Counter(
    "dlkit_jobs_finished_total",
    "Jobs that reached a terminal status, counted where the transition was applied.",
    ["status"],
)
JOB_FAILURES = Counter("dlkit_job_failures_total", "Failed jobs by reason.", ["reason"])

# Failure reasons: a fixed set, never the error text (which can hold ids and endpoints).
NO_FILES_AVAILABLE = "no_files_available"
STORAGE_UNAVAILABLE = "storage_unavailable"
INTERNAL_ERROR = "internal_error"
WORKER_DIED = "worker_died"  # its work horse was killed (worker/__main__.py)
WORKER_LOST = "worker_lost"  # the whole worker stopped heartbeating (a sweeper found it)
