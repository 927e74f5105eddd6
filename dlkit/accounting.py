"""Backend accounting: work the server started, finished, and finished for nobody.

The counters live in Redis under `dlkit:accounting:`, so every gunicorn worker, every RQ work
horse and the demo (which reads them directly) see the same figures, and they survive any one
process. INCR / INCRBYFLOAT are atomic, so concurrent writers never lose a count.

Synchronous `start` (app/routes/legacy.py):
- started / finished: handlers whose simulated work began / ran to its end;
- wasted: work that finished after the app had already answered its client with an error (its
  own 504 past REQUEST_TIMEOUT_MS). The work goes on, as in the original service, for nobody.
  A proxy or a client that gives up *before* the app does is invisible from inside the app; the
  load tests report those cuts from the client side, by layer.

Jobs (app/metrics.py counts on the API side, worker/metrics.py in the work horse):
- created: jobs the API accepted (an Idempotency-Key replay creates nothing);
- completed (+ their simulated seconds, their seconds in the queue and from initiate to the artifact
  being ready: with the client's time to file, what `dlkit demo` splits into queue wait, work and
  poll overhead), downloaded (the API handed out the artifact's URL:
  the first 302 per job; S3 fetches themselves are not visible to the API);
- cancelled_running (+ the seconds the job had run): a job cancelled while queued cost nothing.
Wasted job seconds = seconds of jobs cancelled mid-way + seconds of completed jobs never
downloaded. Read them once clients are done: a job completed a moment ago is not downloaded *yet*.
Failed jobs are not counted as waste: their client is told (status `failed`), as it asked.

The counters are a fixed set of keys and never expire (`dlkit demo` resets them); the ids of the
jobs already downloaded are kept one set per day, each expiring at a fixed time (see job_downloaded).
"""

from __future__ import annotations

import logging
import time

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PREFIX = "dlkit:accounting:"

SYNC_STARTED = PREFIX + "sync:started"
SYNC_FINISHED = PREFIX + "sync:finished"
SYNC_SECONDS = PREFIX + "sync:seconds"  # simulated work seconds of every finished handler
SYNC_WASTED = PREFIX + "sync:wasted"
SYNC_WASTED_SECONDS = PREFIX + "sync:wasted_seconds"

JOBS_CREATED = PREFIX + "jobs:created"
JOBS_COMPLETED = PREFIX + "jobs:completed"
JOBS_COMPLETED_SECONDS = PREFIX + "jobs:completed_seconds"
JOBS_QUEUE_WAIT_SECONDS = PREFIX + "jobs:queue_wait_seconds"  # of completed jobs
JOBS_READY_SECONDS = PREFIX + "jobs:ready_seconds"  # initiate -> artifact ready, of completed jobs
JOBS_DOWNLOADED = PREFIX + "jobs:downloaded"
JOBS_DOWNLOADED_SECONDS = PREFIX + "jobs:downloaded_seconds"
JOBS_DOWNLOADED_IDS = PREFIX + "jobs:downloaded_ids"  # + ":<window>": sets, only the first 302 of a job counts
JOBS_CANCELLED_RUNNING = PREFIX + "jobs:cancelled_running"
JOBS_CANCELLED_SECONDS = PREFIX + "jobs:cancelled_seconds"

KEYS = (
    SYNC_STARTED,
    SYNC_FINISHED,
    SYNC_SECONDS,
    SYNC_WASTED,
    SYNC_WASTED_SECONDS,
    JOBS_CREATED,
    JOBS_COMPLETED,
    JOBS_COMPLETED_SECONDS,
    JOBS_QUEUE_WAIT_SECONDS,
    JOBS_READY_SECONDS,
    JOBS_DOWNLOADED,
    JOBS_DOWNLOADED_SECONDS,
    JOBS_CANCELLED_RUNNING,
    JOBS_CANCELLED_SECONDS,
)

# The downloaded ids are kept in one set per window of this length, as long as a job record lives
# by default (JOB_TTL_S): a job is downloaded within its window or the next, so those two sets
# are all a download is checked against, and each set expires at the end of the next window.
IDS_WINDOW_S = 86_400


def downloaded_ids_key(window: int) -> str:
    return f"{JOBS_DOWNLOADED_IDS}:{window}"


def _count(redis: Redis, key: str, seconds_key: str | None = None, seconds: float = 0.0) -> None:
    """One event (+ its seconds). Accounting never breaks a request: Redis errors are logged."""
    try:
        with redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            if seconds_key is not None:
                pipe.incrbyfloat(seconds_key, seconds)
            pipe.execute()
    except RedisError as error:
        log.warning("accounting: could not count %s: %s", key, error)


def sync_started(redis: Redis) -> None:
    _count(redis, SYNC_STARTED)


def sync_finished(redis: Redis, seconds: float, client_got_error: bool) -> None:
    _count(redis, SYNC_FINISHED, SYNC_SECONDS, seconds)
    if client_got_error:
        _count(redis, SYNC_WASTED, SYNC_WASTED_SECONDS, seconds)


def job_created(pipe: Pipeline) -> None:
    """A job was created: queued on the create's own writes (dlkit/jobs.py JobStore.create_counted runs
    them in one script with the job's record), so it costs no round trip and counts only created jobs."""
    pipe.incr(JOBS_CREATED)


def job_completed(redis: Redis, seconds: float, queue_wait_s: float, ready_s: float) -> None:
    """A job's artifact is ready: `seconds` of simulated work, after `queue_wait_s` in the queue,
    `ready_s` after it was initiated."""
    try:
        with redis.pipeline(transaction=False) as pipe:
            pipe.incr(JOBS_COMPLETED)
            pipe.incrbyfloat(JOBS_COMPLETED_SECONDS, seconds)
            pipe.incrbyfloat(JOBS_QUEUE_WAIT_SECONDS, queue_wait_s)
            pipe.incrbyfloat(JOBS_READY_SECONDS, ready_s)
            pipe.execute()
    except RedisError as error:
        log.warning("accounting: could not count a completed job: %s", error)


def job_cancelled_running(redis: Redis, seconds: float) -> None:
    _count(redis, JOBS_CANCELLED_RUNNING, JOBS_CANCELLED_SECONDS, seconds)


def job_downloaded(redis: Redis, job_id: str, seconds: float, now: float | None = None) -> None:
    """The artifact's URL was handed out; counted once per job, however often it is asked for.

    The window's set expires at a fixed time (EXPIREAT, the end of the next window), which later
    downloads set again unchanged: pushing a relative TTL back on every download would keep the
    set alive, and growing, for as long as downloads keep coming."""
    window = int((time.time() if now is None else now) // IDS_WINDOW_S)
    try:
        with redis.pipeline(transaction=False) as pipe:
            pipe.sismember(downloaded_ids_key(window - 1), job_id)
            pipe.sadd(downloaded_ids_key(window), job_id)
            pipe.expireat(downloaded_ids_key(window), (window + 2) * IDS_WINDOW_S)
            seen_before, added, _ = pipe.execute()
    except RedisError as error:
        log.warning("accounting: could not record the download of %s: %s", job_id, error)
        return
    if added and not seen_before:
        _count(redis, JOBS_DOWNLOADED, JOBS_DOWNLOADED_SECONDS, seconds)


def read(redis: Redis) -> dict:
    """Every figure, as numbers: {"sync": {...}, "jobs": {...}}."""
    values = dict(zip(KEYS, (float(v) if v is not None else 0.0 for v in redis.mget(KEYS)), strict=True))
    jobs_wasted = values[JOBS_CANCELLED_SECONDS] + values[JOBS_COMPLETED_SECONDS] - values[JOBS_DOWNLOADED_SECONDS]
    return {
        "sync": {
            "started": int(values[SYNC_STARTED]),
            "finished": int(values[SYNC_FINISHED]),
            "wasted": int(values[SYNC_WASTED]),
            "seconds": round(values[SYNC_SECONDS], 3),
            "wasted_seconds": round(values[SYNC_WASTED_SECONDS], 3),
        },
        "jobs": {
            "created": int(values[JOBS_CREATED]),
            "completed": int(values[JOBS_COMPLETED]),
            "downloaded": int(values[JOBS_DOWNLOADED]),
            "cancelled_running": int(values[JOBS_CANCELLED_RUNNING]),
            "seconds": round(values[JOBS_COMPLETED_SECONDS] + values[JOBS_CANCELLED_SECONDS], 3),
            "completed_seconds": round(values[JOBS_COMPLETED_SECONDS], 3),
            "queue_wait_seconds": round(values[JOBS_QUEUE_WAIT_SECONDS], 3),
            "ready_seconds": round(values[JOBS_READY_SECONDS], 3),
            # Float sums of the same values in another order can differ in the last bits.
            "wasted_seconds": round(max(0.0, jobs_wasted), 3),
        },
    }


def reset(redis: Redis) -> None:
    """Zero every figure (the demo does so between scenarios, while no work is in flight)."""
    window = int(time.time() // IDS_WINDOW_S)
    redis.delete(*KEYS, downloaded_ids_key(window - 1), downloaded_ids_key(window))
