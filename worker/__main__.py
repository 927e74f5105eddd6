"""`python -m worker [--name NAME] [--burst] [--metrics-port PORT]`: one RQ worker on the downloads queue.

Run as many as you like, on as many hosts as you like, against the same Redis. With a metrics port
(or WORKER_METRICS_PORT) each worker serves its own Prometheus /metrics there.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time

from redis import Redis
from redis.driver_info import DriverInfo
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.exceptions import StopRequested

from dlkit import multiproc, telemetry
from dlkit.jobs import JobStatus, JobStore
from dlkit.metrics import WORKER_DIED
from dlkit.settings import Settings
from dlkit.workers import LiveWorkers, Presence

from . import sweeper

log = logging.getLogger("worker")
# Reconnecting to a lost Redis: first retry after half a second, doubling up to 30 s.
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--name", help="worker name, unique per Redis (default: RQ picks one)")
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=_env_int("WORKER_METRICS_PORT"),
        help="serve Prometheus metrics on this port (default: $WORKER_METRICS_PORT, else none)",
    )
    parser.add_argument(
        "--metrics-host",
        default=os.environ.get("WORKER_METRICS_HOST", "0.0.0.0"),
        help="address the metrics server binds (default: $WORKER_METRICS_HOST or 0.0.0.0)",
    )
    args = parser.parse_args(argv)

    # Multiprocess metrics need a directory of this worker's own, set and emptied before
    # prometheus_client is first imported (worker.metrics imports it, and its metrics open their
    # files then), so that the forked work horses inherit it.
    metrics_dir = multiproc.choose_directory(prefix="dlkit-worker-metrics-")
    multiproc.remove_previous_run(metrics_dir)
    from . import metrics

    settings = Settings.from_env()
    telemetry.configure_logging()
    telemetry.setup(settings, "dlkit-worker")  # before the fork of each work horse, which inherits it
    # Paid once here rather than by every forked work horse: importing the job module (boto3),
    # its settings and S3 client (worker/tasks.py prepare).
    from . import tasks

    tasks.prepare(settings)
    # The client's name and version, resolved once here: else every work horse's new connection reads
    # the installed package's metadata again (about 5 ms of each job on a small machine).
    redis = Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=2, health_check_interval=30, driver_info=DriverInfo()
    )
    store = JobStore(redis, settings.JOB_TTL_S)

    lost = sweeper.lost_jobs(settings, count=metrics.job_lost)
    # Stamped live on the sweeper's connection and thread: the API counts only workers that stamp.
    presence = Presence(LiveWorkers(lost.store.redis, settings.QUEUE_NAME, settings.stale_after_s))
    sweeper.Sweeper(lost, settings.stale_after_s, settings.sweep_interval_s, beat=presence.beat).start()

    def on_horse_killed(job, retpid, ret_val, rusage) -> None:
        # RQ knows nothing of our record: without this the job would wait for a sweeper. Re-queued in
        # our record, it is re-enqueued by RQ's own failure handling, which runs next, as a retry.
        reason = f"worker process died while processing (wait status {ret_val})"
        changed = lost.handle(job.id, reason, WORKER_DIED, in_rq=False)
        # Queued also when it died before starting the job (no attempt spent) or a sweeper came first
        # (then RQ holds it twice; the second run finds it started and skips it).
        current = changed or store.get(job.id)
        if current is not None and current.status is JobStatus.QUEUED:
            job.retries_left = 1
        metrics.horse_killed()

    worker = metrics.MeteredWorker(
        [Queue(settings.QUEUE_NAME, connection=redis)],
        connection=redis,
        name=args.name,
        work_horse_killed_handler=on_horse_killed,
    )
    worker.samples = metrics.Samples(metrics_dir)  # compacted after every job, served or not
    worker.presence = presence
    if args.metrics_port is not None:
        metrics.serve(worker, args.metrics_port, args.metrics_host)
    while True:
        try:
            worker.work(burst=args.burst, logging_level="INFO", with_scheduler=False)
        except RedisError as error:  # its teardown could not reach Redis either
            log.warning("worker loop ended: %s", error)
        if args.burst or worker.stopping:
            return
        # RQ's loop survives Redis going away while it waits for work, but quits on the first Redis
        # error met while a job runs (a heartbeat). A blip must not leave the queue to nobody.
        try:
            recover(worker, store, redis)
        except StopRequested:
            return


def recover(worker: Worker, store: JobStore, redis: Redis) -> None:
    """Wait for Redis, end honestly the job that was running, and make the worker (a MeteredWorker,
    worker/metrics.py) ready to work again. SIGTERM or SIGINT meanwhile: StopRequested."""

    def stop(signum, frame):
        raise StopRequested()

    signal.signal(signal.SIGTERM, stop)  # RQ's own handlers ask Redis for the worker's state
    signal.signal(signal.SIGINT, stop)
    delay = RECONNECT_FIRST_S
    while True:
        try:
            redis.ping()
            break
        except RedisError as error:
            log.warning("Redis unreachable (%s); retrying in %g s", error, delay)
            time.sleep(delay)
            delay = min(2 * delay, RECONNECT_MAX_S)
    horse = worker.horse_pid
    if horse:
        # Its own writes to Redis failed too, or will: let it end (done, failed or not) before judging.
        try:
            os.waitpid(horse, 0)
        except ChildProcessError:
            pass  # already reaped
    if worker.job_in_hand:
        # Forward-only: a job the horse managed to finish or fail keeps its end.
        store.fail(worker.job_in_hand, "the worker lost its connection to Redis while running the job")
        worker.job_in_hand = None
    worker.register_death()  # its stale registration, so that work() can register it afresh
    log.warning("Redis is back: working again")
    time.sleep(RECONNECT_FIRST_S)  # a loop that keeps failing must not spin


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


if __name__ == "__main__":
    main()
