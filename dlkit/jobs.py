"""The job record: one Redis hash per job, written by the API at initiate and by the worker as it goes.

Both the API and the workers import this module; neither touches the hash any other way.
Status changes go through one Lua script that checks the current status first, so states
only move forward (queued -> processing -> completed | failed | cancelled) even when the API
(cancel), the worker (progress, completion) and the watchdog race each other.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError

KEY_PREFIX = "dlkit"


class JobStatus(str, Enum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = (JobStatus.QUEUED, JobStatus.PROCESSING)


def job_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:job:{job_id}"


def cancel_key(job_id: str) -> str:
    """A list the API pushes to on cancel; the worker's wait between files blocks on it."""
    return f"{KEY_PREFIX}:job:{job_id}:cancel"


def events_channel(job_id: str) -> str:
    """Pub/sub channel announcing every change of the job's record (server-sent events listen)."""
    return f"{KEY_PREFIX}:job:{job_id}:events"


def owner_index_key(owner: str) -> str:
    return f"{KEY_PREFIX}:owner:{owner}:jobs"


def idempotency_key(owner: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{KEY_PREFIX}:idempotency:{owner}:{digest}"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Job:
    id: str
    owner: str
    status: JobStatus
    file_ids: list[int]
    delay_s: float
    created_at: float
    updated_at: float
    processed_files: int = 0
    unavailable_file_ids: list[int] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    error: str | None = None
    artifact_key: str | None = None
    artifact_size: int | None = None
    artifact_sha256: str | None = None

    @property
    def total_files(self) -> int:
        return len(self.file_ids)

    @property
    def progress(self) -> float:
        """Percent of files processed (a completed job is 100 even if it had no files left to add)."""
        if self.status is JobStatus.COMPLETED:
            return 100.0
        return round(100.0 * self.processed_files / self.total_files, 1)

    def estimated_seconds_remaining(self, now: float, queue_wait_s: float = 0.0) -> float | None:
        """Seconds until done: for a queued job its expected wait in the queue (given) plus its own work."""
        if self.status is JobStatus.QUEUED:
            return round(queue_wait_s + self.delay_s, 3)
        if self.status is not JobStatus.PROCESSING:
            return None
        by_files = self.delay_s * (self.total_files - self.processed_files) / self.total_files
        by_clock = (self.started_at or now) + self.delay_s - now
        return round(max(0.0, min(by_files, by_clock)), 3)

    def to_hash(self) -> dict[str, str]:
        fields = {
            "id": self.id,
            "owner": self.owner,
            "status": self.status.value,
            "fileIds": json.dumps(self.file_ids),
            "delayS": repr(self.delay_s),
            "createdAt": repr(self.created_at),
            "updatedAt": repr(self.updated_at),
            "processedFiles": str(self.processed_files),
            "unavailableFileIds": json.dumps(self.unavailable_file_ids),
        }
        optional = {
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "heartbeatAt": self.heartbeat_at,
            "error": self.error,
            "artifactKey": self.artifact_key,
            "artifactSize": self.artifact_size,
            "artifactSha256": self.artifact_sha256,
        }
        fields.update({k: (repr(v) if isinstance(v, float) else str(v)) for k, v in optional.items() if v is not None})
        return fields

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Job:
        def opt_float(name: str) -> float | None:
            return float(h[name]) if name in h else None

        return cls(
            id=h["id"],
            owner=h["owner"],
            status=JobStatus(h["status"]),
            file_ids=json.loads(h["fileIds"]),
            delay_s=float(h["delayS"]),
            created_at=float(h["createdAt"]),
            updated_at=float(h["updatedAt"]),
            processed_files=int(h.get("processedFiles", 0)),
            unavailable_file_ids=json.loads(h.get("unavailableFileIds", "[]")),
            started_at=opt_float("startedAt"),
            finished_at=opt_float("finishedAt"),
            heartbeat_at=opt_float("heartbeatAt"),
            error=h.get("error"),
            artifact_key=h.get("artifactKey"),
            artifact_size=int(h["artifactSize"]) if "artifactSize" in h else None,
            artifact_sha256=h.get("artifactSha256"),
        )

    def to_api(self, now: float | None = None, queue_wait_s: float = 0.0) -> dict:
        """The status document of the v1 contract (downloadUrl is filled in by the API)."""
        now = time.time() if now is None else now
        return {
            "jobId": self.id,
            "status": self.status.value,
            "progress": self.progress,
            "totalFiles": self.total_files,
            "processedFiles": self.processed_files,
            "unavailableFileIds": self.unavailable_file_ids,
            "downloadUrl": None,
            "error": self.error,
            "createdAt": _iso(self.created_at),
            "updatedAt": _iso(self.updated_at),
            "estimatedSecondsRemaining": self.estimated_seconds_remaining(now, queue_wait_s),
            "artifact": (
                {"size": self.artifact_size, "sha256": self.artifact_sha256}
                if self.status is JobStatus.COMPLETED
                else None
            ),
        }


# KEYS[1] = job hash, KEYS[2] = its events channel. ARGV[1] = allowed current statuses (space
# separated), ARGV[2] = new status ('' to keep it), ARGV[3] = TTL seconds, ARGV[4] = '1' to announce
# the change on the channel, then field/value pairs. Returns {applied, current status}.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
for s in string.gmatch(ARGV[1], '%S+') do
  if s == cur then
    if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[2]) end
    for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    if ARGV[4] == '1' then redis.call('PUBLISH', KEYS[2], ARGV[2] ~= '' and ARGV[2] or cur) end
    return {1, cur}
  end
end
return {0, cur}
"""


@dataclass(frozen=True)
class Transition:
    applied: bool
    previous: JobStatus | None  # None: no such job (unknown or expired)


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


class JobStore:
    """Reads and writes job records. The Redis client is passed in (bytes responses, as RQ needs)."""

    def __init__(self, redis: Redis, ttl_s: int, clock: Callable[[], float] = time.time):
        self.redis = redis
        self.ttl_s = ttl_s
        self.clock = clock
        self._transition = redis.register_script(_TRANSITION)

    # -- API side -------------------------------------------------------------------------

    def create(
        self,
        owner: str,
        file_ids: list[int],
        delay_s: float,
        enqueue: Callable[[Pipeline, str], None],
        idempotency: tuple[str, str] | None = None,
    ) -> tuple[Job, bool]:
        """Store a new queued job and enqueue it in one MULTI/EXEC; return (job, created).

        `enqueue(pipe, job_id)` adds the queue's commands to the same transaction, so a job is
        never recorded without being queued, nor queued without its record. `idempotency` is
        (key, request fingerprint): a retry with the same key and body returns the first job,
        even when both requests arrive at once (WATCH makes the loser re-read the winner's key).
        """
        idem_key = idempotency_key(owner, idempotency[0]) if idempotency else None
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    if idem_key:
                        pipe.watch(idem_key)
                        existing = pipe.get(idem_key)
                        if existing is not None:
                            job = self._replay(existing, idempotency[1])
                            if job is not None:
                                return job, False
                    now = self.clock()
                    job = Job(
                        id=str(uuid.uuid4()),
                        owner=owner,
                        status=JobStatus.QUEUED,
                        file_ids=list(file_ids),
                        delay_s=delay_s,
                        created_at=now,
                        updated_at=now,
                    )
                    pipe.multi()
                    pipe.hset(job_key(job.id), mapping=job.to_hash())
                    pipe.expire(job_key(job.id), self.ttl_s)
                    pipe.zadd(owner_index_key(owner), {job.id: now})
                    # Each create pushes the index's expiry back, so an active owner's index never
                    # expires: drop the entries older than a record lives, so it stays bounded.
                    pipe.zremrangebyscore(owner_index_key(owner), "-inf", now - self.ttl_s)
                    pipe.expire(owner_index_key(owner), self.ttl_s)
                    if idem_key:
                        pipe.set(idem_key, json.dumps({"jobId": job.id, "fingerprint": idempotency[1]}), ex=self.ttl_s)
                    enqueue(pipe, job.id)
                    pipe.execute()
                    return job, True
                except WatchError:
                    continue

    def _replay(self, stored: str, fingerprint: str) -> Job | None:
        entry = json.loads(stored)
        if entry["fingerprint"] != fingerprint:
            raise IdempotencyConflict()
        # The key outlives nothing: it has the job's TTL. A missing record means it expired.
        return self.get(entry["jobId"])

    def get(self, job_id: str) -> Job | None:
        h = self.redis.hgetall(job_key(job_id))
        return Job.from_hash(_decode_hash(h)) if h else None

    def get_counted(self, job_id: str, counter_key: str, counter_ttl_s: int) -> tuple[Job | None, int]:
        """The job, and `counter_key` incremented, in one round trip: a status poll reads its job and
        counts against its client's rate limit together. The counter expires `counter_ttl_s` after its
        first count (one more round trip, once per counter)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(counter_key)
            pipe.hgetall(job_key(job_id))
            count, h = pipe.execute()
        if count == 1:
            self.redis.expire(counter_key, counter_ttl_s)
        return (Job.from_hash(_decode_hash(h)) if h else None), count

    def count(self, counter_key: str, counter_ttl_s: int) -> int:
        """`counter_key` incremented (a rate limit's window), expiring `counter_ttl_s` after its first count."""
        count = self.redis.incr(counter_key)
        if count == 1:
            self.redis.expire(counter_key, counter_ttl_s)
        return count

    def queue_position(self, queue_key: str, workers_key: str, job_id: str) -> tuple[int | None, int]:
        """(jobs ahead of `job_id` in RQ's queue list, or None if not in it; workers on the queue), one round
        trip. RQ pushes right and pops left, so the index is the number of jobs ahead."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpos(queue_key, job_id)
            pipe.scard(workers_key)
            position, workers = pipe.execute()
        return position, workers

    def list_for_owner(self, owner: str, limit: int, offset: int = 0) -> list[Job]:
        """The owner's jobs, newest first. Expired records are dropped from the index."""
        ids = [i.decode() for i in self.redis.zrevrange(owner_index_key(owner), offset, offset + limit - 1)]
        if not ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(job_key(job_id))
            hashes = pipe.execute()
        expired = [job_id for job_id, h in zip(ids, hashes, strict=True) if not h]
        if expired:
            self.redis.zrem(owner_index_key(owner), *expired)
        return [Job.from_hash(_decode_hash(h)) for h in hashes if h]

    def cancel(self, job_id: str) -> Transition:
        """Mark an active job cancelled and wake its worker; a terminal job is left as it is."""
        now = self.clock()
        result = self._apply(job_id, ACTIVE, JobStatus.CANCELLED, finishedAt=now, updatedAt=now)
        if result.applied:
            with self.redis.pipeline() as pipe:
                pipe.rpush(cancel_key(job_id), "cancel")
                pipe.expire(cancel_key(job_id), self.ttl_s)
                pipe.execute()
        return result

    def fail_if_stale(self, job: Job, stale_after_s: float) -> Job:
        """Watchdog: a processing job whose worker stopped heartbeating is failed, not left hanging.

        Called on every status read, so a dead worker is noticed by the first poll after
        `stale_after_s`, without a sweeper process of its own.
        """
        now = self.clock()
        beat = job.heartbeat_at or job.started_at or job.updated_at
        if job.status is not JobStatus.PROCESSING or now - beat <= stale_after_s:
            return job
        error = f"worker lost: no heartbeat for {now - beat:.1f} s"
        if self.fail(job.id, error, allowed=(JobStatus.PROCESSING,)).applied:
            return self.get(job.id) or job
        return self.get(job.id) or job

    # -- worker side ----------------------------------------------------------------------

    def start(self, job_id: str) -> Transition:
        now = self.clock()
        return self._apply(
            job_id, (JobStatus.QUEUED,), JobStatus.PROCESSING, startedAt=now, heartbeatAt=now, updatedAt=now
        )

    def record_progress(self, job_id: str, processed_files: int, unavailable_file_ids: list[int]) -> Transition:
        now = self.clock()
        return self._apply(
            job_id,
            (JobStatus.PROCESSING,),
            None,
            processedFiles=processed_files,
            unavailableFileIds=json.dumps(unavailable_file_ids),
            heartbeatAt=now,
            updatedAt=now,
        )

    def heartbeat(self, job_id: str) -> Transition:
        # Not announced: nothing a client sees has changed.
        return self._apply(job_id, (JobStatus.PROCESSING,), None, announce=False, heartbeatAt=self.clock())

    def complete(self, job_id: str, artifact_key: str, size: int, sha256: str) -> Transition:
        now = self.clock()
        return self._apply(
            job_id,
            (JobStatus.PROCESSING,),
            JobStatus.COMPLETED,
            artifactKey=artifact_key,
            artifactSize=size,
            artifactSha256=sha256,
            finishedAt=now,
            updatedAt=now,
        )

    def fail(self, job_id: str, error: str, allowed: tuple[JobStatus, ...] = ACTIVE) -> Transition:
        now = self.clock()
        return self._apply(job_id, allowed, JobStatus.FAILED, error=error, finishedAt=now, updatedAt=now)

    def _apply(self, job_id: str, allowed, new_status: JobStatus | None, announce: bool = True, **fields) -> Transition:
        args: list = [
            " ".join(s.value for s in allowed),
            new_status.value if new_status else "",
            self.ttl_s,
            "1" if announce else "0",
        ]
        for name, value in fields.items():
            args += [name, repr(value) if isinstance(value, float) else str(value)]
        applied, current = self._transition(keys=[job_key(job_id), events_channel(job_id)], args=args)
        return Transition(bool(applied), JobStatus(current.decode()) if current else None)


def _decode_hash(h: dict[bytes, bytes]) -> dict[str, str]:
    # One Redis client (bytes, as RQ needs) serves both RQ and the job store.
    return {k.decode(): v.decode() for k, v in h.items()}
