"""Prometheus metrics of an RQ worker, served by the worker itself on its own port, so that workers
on any number of hosts can each be scraped.

RQ runs every job in a work horse forked for that job, and a counter incremented in the horse
would vanish with it. So the worker runs prometheus-client in multiprocess mode with a directory
of its own (PROMETHEUS_MULTIPROC_DIR, set by `python -m worker` before prometheus_client is
imported): the horse writes its samples to files there and the worker's /metrics reads them.
One horse per job would leave two files per job behind, read on every scrape; so after each
horse exits the worker folds its files into one archive file per type and deletes them
(`compact`), under a lock that scrapes also take, so no scrape sees a sample twice or not at all.

The job figures (queue wait, run time, time to file, files, bytes) are observed in the horse, at
the points in worker/tasks.py where they happen; busy/idle and heartbeat age are the worker's
own state, read at scrape time.
"""

from __future__ import annotations

import glob
import os
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.mmap_dict import MmapedDict
from rq import Worker, get_current_job

from dlkit import accounting, exemplars
from dlkit.jobs import Job, JobStatus, Transition
from dlkit.metrics import INTERNAL_ERROR as INTERNAL_ERROR  # re-exported for worker/tasks.py
from dlkit.metrics import JOB_FAILURES, JOBS_FINISHED
from dlkit.metrics import NO_FILES_AVAILABLE as NO_FILES_AVAILABLE
from dlkit.metrics import STORAGE_UNAVAILABLE as STORAGE_UNAVAILABLE
from dlkit.workers import Presence

# Jobs take 10-120 s at real speed plus their queue wait; prometheus-client's default buckets stop
# at 10 s. These cover 0.1 s (TIME_SCALE 0.02 in CI) to 10 minutes. 150 s is the time-to-file SLO
# threshold (infra/prometheus/rules.yml), so it must be a bucket bound.
JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 150, 180, 240, 300, 450, 600)

WORKER_JOBS = Counter(
    "dlkit_worker_jobs_total",
    "Jobs this worker took from the queue, by what became of them "
    "(stopped: cancelled or re-queued under it; skipped: cancelled before it started; horse_killed: "
    "its work horse died).",
    ["outcome"],
)
QUEUE_WAIT = Histogram(
    "dlkit_job_queue_wait_seconds", "From initiate to a worker starting the job.", buckets=JOB_BUCKETS
)
RUN_TIME = Histogram("dlkit_job_run_seconds", "From a worker starting the job to its end.", buckets=JOB_BUCKETS)
TIME_TO_FILE = Histogram(
    "dlkit_job_time_to_file_seconds",
    "From initiate to the artifact being ready, completed jobs only.",
    buckets=JOB_BUCKETS,
)
REQUEUED = Counter(
    "dlkit_jobs_requeued_total",
    "Jobs put back in the queue because their worker was lost, by reason (worker_died: its work horse "
    "was killed; worker_lost: the whole worker stopped heartbeating).",
    ["reason"],
)
FILES = Counter("dlkit_worker_files_total", "Requested files processed, by availability.", ["result"])
ARTIFACT_BYTES = Counter("dlkit_worker_artifact_bytes_total", "Bytes of completed artifacts uploaded to S3.")


# --- called from the work horse (worker/tasks.py) --------------------------------------------------


def job_started(job: Job) -> None:
    # Each job histogram with the job's trace id as its exemplar when the job is traced (dlkit/exemplars.py).
    exemplars.observe(QUEUE_WAIT, max(0.0, job.started_at - job.created_at), JOB_BUCKETS)


def job_skipped() -> None:
    WORKER_JOBS.labels("skipped").inc()


def file_processed(available: bool) -> None:
    FILES.labels("added" if available else "unavailable").inc()


def job_completed(job: Job, done: Transition, size: int) -> None:
    """After store.complete(): counts only if this worker's transition was the one applied."""
    if not done.applied:
        job_stopped()
        return
    now = time.time()
    JOBS_FINISHED.labels(JobStatus.COMPLETED.value).inc()
    WORKER_JOBS.labels("completed").inc()
    exemplars.observe(RUN_TIME, max(0.0, now - job.started_at), JOB_BUCKETS)
    exemplars.observe(TIME_TO_FILE, max(0.0, now - job.created_at), JOB_BUCKETS)
    exemplars.flush()  # the horse leaves with os._exit, before any timer would write them
    ARTIFACT_BYTES.inc(size)
    # Backend accounting (dlkit/accounting.py), in the job's own Redis: the horse's RQ connection.
    queue_wait = max(0.0, job.started_at - job.created_at)
    accounting.job_completed(get_current_job().connection, job.delay_s, queue_wait, max(0.0, now - job.created_at))


def job_failed(job: Job, failed: Transition, reason: str) -> None:
    """After store.fail(): counts the failure only if this worker's transition was the one applied."""
    if not failed.applied:
        job_stopped()
        return
    JOBS_FINISHED.labels(JobStatus.FAILED.value).inc()
    JOB_FAILURES.labels(reason).inc()
    WORKER_JOBS.labels("failed").inc()
    exemplars.observe(RUN_TIME, max(0.0, time.time() - job.started_at), JOB_BUCKETS)
    exemplars.flush()


def job_stopped() -> None:
    # Whoever moved the job out of processing (the API's cancel, a sweeper's re-queue) counted it.
    WORKER_JOBS.labels("stopped").inc()


# --- called from the worker's main process (worker/__main__.py, worker/sweeper.py) ------------------


def horse_killed() -> None:
    WORKER_JOBS.labels("horse_killed").inc()


def job_lost(changed: Job, reason: str) -> None:
    """A lost job this worker re-queued, or failed after its last attempt (worker/sweeper.py)."""
    if changed.status is JobStatus.QUEUED:
        REQUEUED.labels(reason).inc()
    elif changed.status is JobStatus.FAILED:
        JOBS_FINISHED.labels(JobStatus.FAILED.value).inc()
        JOB_FAILURES.labels(reason).inc()


class Samples:
    """The multiprocess files of this worker and its horses, read and compacted under one lock."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.lock = threading.Lock()
        self._files = exemplars.Collector(directory)  # bucket samples with their exemplars

    def collect(self):
        with self.lock:
            yield from self._files.collect()

    def compact(self, keep_pid: int) -> None:
        """Fold every counter and histogram file not written by `keep_pid` into `<type>_archive.db`
        (and the exemplar files likewise, dlkit/exemplars.py).

        Call only while no horse is running (between jobs): the files folded are then final.
        prometheus-client has no public API for this, and declines a general one (a pid may be reused
        while another process writes: prometheus/client_python#204, #518). Here only this worker folds,
        under the lock its scrapes take, and only files of horses it has reaped, so neither can happen.
        MmapedDict is the format of prometheus-client's own files; pinned below 1.0 in pyproject.toml.
        """
        with self.lock:
            for kind in ("counter", "histogram"):
                archive_path = os.path.join(self.directory, f"{kind}_archive.db")
                done = [archive_path, os.path.join(self.directory, f"{kind}_{keep_pid}.db")]
                dead = [path for path in glob.glob(os.path.join(self.directory, f"{kind}_*.db")) if path not in done]
                if not dead:
                    continue
                archive = MmapedDict(archive_path)
                try:
                    for path in dead:
                        for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(path):
                            total, _ = archive.read_value(key)
                            archive.write_value(key, total + value, 0.0)
                        os.remove(path)
                finally:
                    archive.close()
            exemplars.fold(self.directory, keep_pid)


class _WorkerState:
    """Busy/idle and heartbeat age of the RQ worker running in this process, read at scrape time."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self):
        busy = self.worker.get_state() == "busy"
        yield GaugeMetricFamily("dlkit_worker_busy", "1 while the worker runs a job, 0 when idle.", value=int(busy))
        last = self.worker.last_heartbeat
        age = max(0.0, time.time() - last.timestamp()) if last else 0.0
        yield GaugeMetricFamily(
            "dlkit_worker_heartbeat_age_seconds", "Seconds since the worker's last heartbeat to Redis.", value=age
        )


class MeteredWorker(Worker):
    """An RQ worker that compacts its horses' metric files after each job, stamps itself live while
    registered (dlkit/workers.py), and remembers what python -m worker needs to recover from a lost
    Redis: the job in hand, and whether a stop was asked."""

    samples: Samples | None = None
    presence: Presence | None = None
    job_in_hand: str | None = None  # set while a job runs; left set when its run ended in an error
    stopping = False

    def execute_job(self, job, queue):
        self.job_in_hand = job.id
        try:
            super().execute_job(job, queue)  # forks the horse and waits for it to exit
        finally:
            if self.samples is not None:
                self.samples.compact(keep_pid=os.getpid())
        self.job_in_hand = None

    def register_birth(self):
        # Stamped live first, so whoever sees it in RQ's registry (a readiness check, the gauge) sees it live.
        if self.presence is not None:
            self.presence.join(self.name)
        try:
            super().register_birth()
        except BaseException:
            if self.presence is not None:
                self.presence.leave()  # e.g. its name is taken: it will not work
            raise

    def register_death(self):
        if self.presence is not None:
            self.presence.leave()
        super().register_death()

    def request_stop(self, signum, frame):
        self.stopping = True
        super().request_stop(signum, frame)


def serve(worker: MeteredWorker, port: int, host: str = "0.0.0.0"):
    """Serve this worker's /metrics on `port` from a thread of the worker's main process."""
    registry = CollectorRegistry()
    registry.register(worker.samples)
    registry.register(_WorkerState(worker))
    return start_http_server(port, addr=host, registry=registry)
