"""`python -m worker [--name NAME] [--burst]`: one RQ worker on the downloads queue.

Run as many as you like, on as many hosts as you like, against the same Redis.
"""

from __future__ import annotations

import argparse
import logging

from redis import Redis
from rq import Queue, Worker

from dlkit.jobs import JobStore
from dlkit.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--name", help="worker name, unique per Redis (default: RQ picks one)")
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redis = Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, health_check_interval=30)
    store = JobStore(redis, settings.JOB_TTL_S)

    def on_horse_killed(job, retpid, ret_val, rusage) -> None:
        # RQ moves the job to its failed registry but knows nothing of our record: without
        # this the job would stay "processing" until the watchdog noticed.
        store.fail(job.id, f"worker process died while processing (wait status {ret_val})")

    worker = Worker(
        [Queue(settings.QUEUE_NAME, connection=redis)],
        connection=redis,
        name=args.name,
        work_horse_killed_handler=on_horse_killed,
    )
    worker.work(burst=args.burst, logging_level="INFO", with_scheduler=False)


if __name__ == "__main__":
    main()
