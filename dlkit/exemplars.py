"""Prometheus exemplars in multiprocess mode: the trace id of a recent observation on each histogram
bucket, so that a point on a latency or job-duration panel leads to one trace.

prometheus-client keeps exemplars only in single-process mode (in multiprocess mode
`MultiProcessValue.set_exemplar` does nothing: prometheus/client_python#648, #826), and both the API
(gunicorn workers) and the RQ workers (a work horse per job) run in multiprocess mode. So:

- `observe()` records the observation as usual and, when the current span is sampled, keeps the
  latest (trace id, value, time) per (metric, labels, bucket) in this process, and writes them to
  `exemplars_<pid>.json` in the multiprocess directory (a whole-file rewrite with an atomic rename,
  at most once per WRITE_INTERVAL_S; a timer writes what a burst left, `flush()` writes now);
- `Collector` is prometheus-client's MultiProcessCollector with, on each bucket sample, the newest
  exemplar any process recorded for it. Exemplars only exist in the OpenMetrics format, which the
  /metrics endpoints answer when the scraper's Accept asks for it.

Tracing off (the default) or an unsampled request: `observe()` costs one check more than
`Histogram.observe`, and no file is written. The files go with the rest of the directory at the next
start (dlkit/multiproc.py). Like prometheus-client's own files, a dead process's file stays (its
exemplars lose to newer ones bucket by bucket); a worker folds its dead work horses' files into one
(`fold`, with its metric compaction in worker/metrics.py).
"""

from __future__ import annotations

import bisect
import glob
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from dlkit import multiproc, telemetry

PREFIX = "exemplars_"
ARCHIVE = f"{PREFIX}archive.json"
# A process rewrites its file at most this often: a busy API pays nothing per request, and a scrape
# (every 15 s in production, 1 s at the fastest in the embedded stack) sees exemplars at most this old.
WRITE_INTERVAL_S = 1.0

# (metric, sorted label pairs, le) -> (trace id, value, unix time)
Key = tuple[str, tuple[tuple[str, str], ...], str]
Row = tuple[str, float, float]

_latest: dict[Key, Row] = {}
_lock = threading.Lock()
_writes = {"last": 0.0, "timer": None}


def observe(histogram: Histogram, value: float, buckets: Sequence[float], **labels: str) -> None:
    """`histogram.labels(**labels).observe(value)`, with the current trace id as the exemplar when the
    current span is sampled (`buckets`: the histogram's bounds, to know which bucket it lands in)."""
    child = histogram.labels(**labels) if labels else histogram
    trace_id = telemetry.trace_id()
    if trace_id is None:
        child.observe(value)
        return
    child.observe(value, {"trace_id": trace_id})  # kept by prometheus-client itself in single-process mode
    directory = os.environ.get(multiproc.VARIABLE)
    if directory:
        index = bisect.bisect_left(buckets, value)
        le = floatToGoString(buckets[index]) if index < len(buckets) else "+Inf"
        name = histogram.describe()[0].name
        record(directory, (name, tuple(sorted(labels.items())), le), (trace_id, value, time.time()))


def record(directory: str, key: Key, row: Row) -> None:
    with _lock:
        _latest[key] = row
        wait = _writes["last"] + WRITE_INTERVAL_S - time.monotonic()
        if wait <= 0:
            _write(directory)
        elif _writes["timer"] is None:
            timer = threading.Timer(wait, flush, args=(directory,))
            timer.daemon = True
            _writes["timer"] = timer
            timer.start()


def flush(directory: str | None = None) -> None:
    """Write this process's exemplars now (a work horse, which leaves with os._exit, calls it last)."""
    directory = directory or os.environ.get(multiproc.VARIABLE)
    with _lock:
        if directory and _latest:
            _write(directory)


def _write(directory: str) -> None:
    # Called with _lock held.
    timer = _writes["timer"]
    if timer is not None and timer is not threading.current_thread():
        timer.cancel()
    _writes["timer"] = None
    _writes["last"] = time.monotonic()
    rows = [[name, dict(labels), le, *row] for (name, labels, le), row in _latest.items()]
    _dump(os.path.join(directory, f"{PREFIX}{os.getpid()}.json"), rows)


def _dump(path: str, rows: list) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as out:
        json.dump(rows, out)
    os.replace(temporary, path)  # a reader sees the old file or the new one, never half of one


def _forget() -> None:
    # A forked child (a work horse) starts with no exemplars and no timer of its own.
    _latest.clear()
    _writes.update(last=0.0, timer=None)


os.register_at_fork(after_in_child=_forget)


# --- reading (the /metrics endpoints) -----------------------------------------------------------


def newest(rows: Iterable[list]) -> dict[Key, Row]:
    """The newest row per (metric, labels, bucket) among rows of any number of processes."""
    found: dict[Key, Row] = {}
    for name, labels, le, trace_id, value, timestamp in rows:
        key = (name, tuple(sorted(labels.items())), le)
        if key not in found or found[key][2] < timestamp:
            found[key] = (trace_id, value, timestamp)
    return found


def read(paths: Iterable[str]) -> list[list]:
    rows = []
    for path in paths:
        try:
            with open(path) as source:
                rows.extend(json.load(source))
        except (OSError, ValueError):  # folded away meanwhile, or not ours
            continue
    return rows


def files(directory: str) -> list[str]:
    return glob.glob(os.path.join(directory, f"{PREFIX}*.json"))


def attach(families: Iterable[Metric], exemplars: dict[Key, Row]) -> Iterator[Metric]:
    """The families, each histogram bucket sample carrying its exemplar where there is one."""
    for family in families:
        if exemplars and family.type == "histogram":
            bucket = f"{family.name}_bucket"
            samples = []
            for sample in family.samples:
                if sample.name == bucket:
                    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                    row = exemplars.get((family.name, labels, sample.labels.get("le", "")))
                    if row is not None:
                        sample = sample._replace(exemplar=Exemplar({"trace_id": row[0]}, row[1], row[2]))
                samples.append(sample)
            family.samples = samples
        yield family


class Collector:
    """prometheus-client's MultiProcessCollector over `directory`, bucket samples with exemplars."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._files = MultiProcessCollector(None, path=directory)

    def collect(self) -> Iterator[Metric]:
        exemplars = newest(read(files(self.directory)))
        return attach(self._files.collect(), exemplars)


def fold(directory: str, keep_pid: int) -> None:
    """Fold every exemplar file but `keep_pid`'s into one (the newest per bucket), and delete them.
    Only for files of processes that have exited (a worker's reaped work horses)."""
    archive = os.path.join(directory, ARCHIVE)
    keep = {archive, os.path.join(directory, f"{PREFIX}{keep_pid}.json")}
    dead = [path for path in files(directory) if path not in keep]
    if not dead:
        return
    merged = newest(read([archive, *dead]))
    _dump(archive, [[name, dict(labels), le, *row] for (name, labels, le), row in merged.items()])
    for path in dead:
        os.remove(path)
