"""Lost jobs: a job whose worker died is re-queued (up to JOB_MAX_ATTEMPTS runs), then failed.

Every `python -m worker` runs a `Sweeper` thread: every quarter heartbeat it stamps its worker live
(dlkit/workers.py), asks the job store for processing jobs whose heartbeat is older than
JOB_STALE_AFTER_S (a sorted set the transition script keeps, so a sweep costs one ZRANGEBYSCORE), and
hands each to `LostJobs`. Any number of workers may sweep at once: the store applies a re-queue only
to the attempt it read, so one sweeper wins. A work horse killed under a live worker goes through the
same `LostJobs` at once (worker/__main__.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.registry import StartedJobRegistry

from dlkit.jobs import Job, JobStatus, JobStore
from dlkit.metrics import WORKER_LOST
from dlkit.settings import Settings
from dlkit.storage import abort_incomplete_uploads, artifact_key, s3_client

log = logging.getLogger(__name__)


class LostJobs:
    """What happens to a job whose worker was lost: back to `queued` with the next attempt (and back in
    RQ's queue), or failed after the last one; either way its partial upload is aborted."""

    def __init__(
        self,
        store: JobStore,
        queue: Queue,
        s3,
        bucket: str,
        max_attempts: int,
        count: Callable[[Job, str], None] = lambda changed, label: None,
    ):
        self.store = store
        self.queue = queue
        self.s3 = s3
        self.bucket = bucket
        self.max_attempts = max_attempts
        self.count = count  # metrics: worker/metrics.py job_lost

    def handle(self, job_id: str, reason: str, label: str, in_rq: bool = True) -> Job | None:
        """Re-queue or fail `job_id`; the job as changed, or None when someone else came first (another
        sweeper, or the job ended). `label`: the reason as a metric label (dlkit/metrics.py).
        `in_rq=False`: the caller leaves RQ's side to RQ (a killed horse)."""
        changed = self.store.requeue_or_fail(job_id, self.max_attempts, reason)
        if changed is None:
            return None
        self.count(changed, label)
        requeued = changed.status is JobStatus.QUEUED
        log.warning("job %s: %s; %s", job_id, reason, f"re-queued, attempt {changed.attempt}" if requeued else "failed")
        if in_rq and not self._rq_requeue(job_id, requeued) and requeued:
            # Its RQ job is gone (evicted): nothing would ever run it.
            self.store.fail(job_id, f"{reason}; its queue entry was lost", allowed=(JobStatus.QUEUED,))
        try:
            abort_incomplete_uploads(self.s3, self.bucket, artifact_key(job_id))
        except (BotoCoreError, ClientError) as error:
            # The store is down: the bucket's lifecycle rule for incomplete uploads cleans up.
            log.warning("job %s: could not abort its partial upload: %s", job_id, error)
        return changed

    def _rq_requeue(self, job_id: str, requeue: bool) -> bool:
        """Take the job out of RQ's started registry (its worker will never do it) and enqueue it again,
        or mark it failed there with an expiry (RQ persists a started job). False if RQ has no such job."""
        registry = StartedJobRegistry(queue=self.queue)
        entries = [f"{j}:{e}" for j, e in registry.get_job_and_execution_ids(cleanup=False) if j == job_id]
        if entries:
            self.queue.connection.zrem(registry.key, *entries)
        try:
            rq_job = RQJob.fetch(job_id, connection=self.queue.connection)
        except NoSuchJobError:
            return False
        if requeue:
            self.queue.enqueue_job(rq_job)
        else:
            with self.queue.connection.pipeline() as pipe:
                rq_job.set_status(RQStatus.FAILED, pipeline=pipe)
                pipe.expire(rq_job.key, rq_job.failure_ttl or self.store.ttl_s)
                pipe.execute()
        return True


class Sweeper(threading.Thread):
    """Every `interval_s`: stamps the worker live (`beat`, dlkit/workers.py), then finds processing jobs
    whose heartbeat is stale and hands them to LostJobs."""

    def __init__(self, lost: LostJobs, lost_after_s: float, interval_s: float, beat: Callable[[], None] = lambda: None):
        super().__init__(name="dlkit-sweeper", daemon=True)
        self.lost = lost
        self.lost_after_s = lost_after_s
        self.interval_s = interval_s
        self.beat = beat
        self.stopped = threading.Event()

    def run(self) -> None:
        redis_down = False
        while not self.stopped.wait(self.interval_s):
            try:
                self.beat()
                self.sweep()
            except RedisError as error:  # Redis away: the worker's own loop waits for it too; say it once
                if not redis_down:
                    log.warning("sweeps fail until Redis is back: %s", error)
                redis_down = True
                continue
            except Exception:  # a sweeper that stops for good would leave lost jobs to nobody
                log.exception("sweep failed")
            redis_down = False

    def sweep(self) -> list[str]:
        """One pass; the ids of the jobs this sweeper re-queued or failed."""
        reason = f"worker lost: no heartbeat for over {self.lost_after_s:g} s"
        lost = self.lost.store.lost(self.lost_after_s)
        return [job_id for job_id in lost if self.lost.handle(job_id, reason, WORKER_LOST)]


def lost_jobs(settings: Settings, count: Callable[[Job, str], None]) -> LostJobs:
    """LostJobs on a Redis connection of its own: the work horses fork from the process that sweeps."""
    redis = Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    queue = Queue(settings.QUEUE_NAME, connection=redis)
    store = JobStore(redis, settings.JOB_TTL_S)
    return LostJobs(store, queue, s3_client(settings), settings.S3_BUCKET_NAME, settings.JOB_MAX_ATTEMPTS, count)
