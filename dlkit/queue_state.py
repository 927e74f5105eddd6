"""The queue's state, read from Redis: what the API's /metrics exports (app/metrics.py) and what the
staging deployment's queue-depth task publishes for worker autoscaling (infra/terraform/services.tf).
One reader, so the gauge and the autoscaling signal are the same number.

Each figure costs the same however many job records Redis holds (1M cost what 10 do):
- queued jobs: LLEN of the RQ queue (cancelling a queued job removes it from the queue), plus jobs a
  worker has taken whose work horse has not started them yet;
- the oldest queued job's age: LINDEX 0 (RQ pushes right, pops left) and that record's createdAt;
- processing jobs and their oldest heartbeat: the ids in RQ's started registry (one entry per running
  job, so bounded by the number of workers plus entries of dead workers RQ has not swept yet), then
  one HMGET each, in one pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis import Redis
from rq import Queue
from rq.registry import StartedJobRegistry

from dlkit.jobs import JobStatus, job_key


@dataclass(frozen=True)
class QueueState:
    queued: int
    processing: int
    oldest_queued_age_s: float  # 0 when nothing is queued
    max_heartbeat_age_s: float  # 0 when nothing is processing


def read(redis: Redis, queue_name: str, now: float | None = None) -> QueueState:
    now = time.time() if now is None else now
    queue = Queue(queue_name, connection=redis)
    queued = queue.count
    oldest_age = 0.0
    head = redis.lindex(queue.key, 0)
    if head is not None:
        created = redis.hget(job_key(head.decode()), "createdAt")
        if created is not None:
            oldest_age = max(0.0, now - float(created))

    started_ids = StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)  # read-only: no sweep
    processing, max_beat_age = 0, 0.0
    if started_ids:
        with redis.pipeline(transaction=False) as pipe:
            for job_id in started_ids:
                pipe.hmget(job_key(job_id), "status", "heartbeatAt", "startedAt")
            rows = pipe.execute()
        for status, beat, started in rows:
            if status is not None and status.decode() == JobStatus.QUEUED.value:
                queued += 1  # taken by a worker whose horse has not started it yet: still queued
            if status is None or status.decode() != JobStatus.PROCESSING.value:
                continue
            processing += 1
            last = beat or started
            if last is not None:
                max_beat_age = max(max_beat_age, now - float(last))
    return QueueState(queued, processing, oldest_age, max_beat_age)
