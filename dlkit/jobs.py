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

from dlkit.settings import MAX_FILES_PER_JOB
from dlkit.workers import LiveWorkers

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


def processing_index_key() -> str:
    """Processing jobs by last heartbeat (a sorted set the transition script keeps): the sweeper's index."""
    return f"{KEY_PREFIX}:jobs:processing"


def event_log_key(job_id: str) -> str:
    """A stream of the job's changes, one entry per announced transition holding the record as it was
    then: server-sent events use the entry ids as event ids, so a client that reconnects with
    Last-Event-ID gets every change after it, once. The lists are left out (an entry holds the count
    of unavailable ids, a prefix of the record's list, which only grows), so a job's log stays linear
    in its number of files."""
    return f"{KEY_PREFIX}:job:{job_id}:log"


# Entries the event log keeps (XADD MAXLEN ~ keeps at least this many): every change a job can have
# (its start, one per file, its end), so a client resuming from any event never misses one.
EVENT_LOG_MAXLEN = MAX_FILES_PER_JOB + 2


def owner_index_key(owner: str) -> str:
    return f"{KEY_PREFIX}:owner:{owner}:jobs"


def active_key(owner: str) -> str:
    """The owner's jobs that may still be active (queued or processing), for MAX_ACTIVE_JOBS_PER_OWNER:
    a sorted set, pruned of finished jobs at each create, so it holds at most the cap."""
    return f"{KEY_PREFIX}:owner:{owner}:active"


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
    attempt: int = 1  # 1-based; a job re-queued after its worker was lost runs again with the next

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
            "attempt": str(self.attempt),
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
            attempt=int(h.get("attempt", 1)),
        )

    def to_api(self, now: float | None = None, queue_wait_s: float = 0.0) -> dict:
        """The status document of the v1 contract (downloadUrl is filled in by the API)."""
        now = time.time() if now is None else now
        return {
            "jobId": self.id,
            "status": self.status.value,
            "attempt": self.attempt,
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
            "note": None,  # filled in by the API when no live worker can move the job on
        }


# KEYS[1] = job hash, KEYS[2] = its events channel, KEYS[3] = the processing index, KEYS[4] = its event
# log. ARGV[1] = allowed current statuses (space separated), ARGV[2] = new status ('' to keep it),
# ARGV[3] = TTL seconds, ARGV[4] = '1' to announce the change (log the record without its lists, then
# publish the entry's id on the channel), ARGV[5] = the attempt the caller works on ('' for any: a worker
# whose job was re-queued under it can change nothing), ARGV[6] = the log's MAXLEN, then field/value
# pairs. A processing job is indexed by its heartbeat, any other leaves the index.
# Returns {applied, current status}.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if ARGV[5] ~= '' and (redis.call('HGET', KEYS[1], 'attempt') or '1') ~= ARGV[5] then return {0, cur} end
for s in string.gmatch(ARGV[1], '%S+') do
  if s == cur then
    if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[2]) end
    for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    local id = redis.call('HGET', KEYS[1], 'id')
    local beat = redis.call('HGET', KEYS[1], 'heartbeatAt')
    if redis.call('HGET', KEYS[1], 'status') == 'processing' and beat then
      redis.call('ZADD', KEYS[3], beat, id)
      redis.call('EXPIRE', KEYS[3], ARGV[3])
    else
      redis.call('ZREM', KEYS[3], id)
    end
    if ARGV[4] == '1' then
      local record = redis.call('HGETALL', KEYS[1])
      local entry = {}
      for i = 1, #record, 2 do
        if record[i] == 'unavailableFileIds' then
          entry[#entry + 1] = 'unavailableCount'
          entry[#entry + 1] = #cjson.decode(record[i + 1])
        elseif record[i] ~= 'fileIds' then
          entry[#entry + 1] = record[i]
          entry[#entry + 1] = record[i + 1]
        end
      end
      local logged = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', unpack(entry))
      redis.call('EXPIRE', KEYS[4], ARGV[3])
      redis.call('PUBLISH', KEYS[2], logged)
    end
    return {1, cur}
  end
end
return {0, cur}
"""


# Initiate's one round trip: its checks, then its writes, in one script. KEYS[1] = a rate limit's counter
# ('' for none), KEYS[2] = the idempotency key (''), KEYS[3] = the owner's active set ('' for no cap: job
# id -> time of its reservation). ARGV[1] = the counter's limit, ARGV[2] = its TTL, ARGV[3] = the request's
# fingerprint, ARGV[4] = the cap, ARGV[5] = the new job's id, ARGV[6] = now, ARGV[7] = TTL seconds,
# ARGV[8] = grace seconds, ARGV[9] = job key prefix, ARGV[10] = the active statuses (space separated), then
# the writes: each command as its number of arguments and the arguments (the job record, its indexes,
# RQ's queue entry: recorded on a pipeline by JobStore.create_counted, run only when every check passes).
# In the active set, entries whose job finished or expired are dropped; an entry without a record is
# counted for ARGV[8] seconds (a create under way in an API of the version that reserved first).
# Returns {'created', count}, {'limited', count}, {'conflict', count}, {'replay', count, job id} or
# {'busy', count, active}; count is the counter's value (0 without one). It reads and writes keys by name
# (the active set's jobs, RQ's): one Redis, not a cluster.
_CREATE = """
local count = 0
if KEYS[1] ~= '' then
  count = redis.call('INCR', KEYS[1])
  if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
  if count > tonumber(ARGV[1]) then return {'limited', count} end
end
if KEYS[2] ~= '' then
  local stored = redis.call('GET', KEYS[2])
  if stored then
    local entry = cjson.decode(stored)
    if entry.fingerprint ~= ARGV[3] then return {'conflict', count} end
    if redis.call('EXISTS', ARGV[9] .. entry.jobId) == 1 then return {'replay', count, entry.jobId} end
  end
end
if KEYS[3] ~= '' then
  local now = tonumber(ARGV[6])
  local live = {}
  for s in string.gmatch(ARGV[10], '%S+') do live[s] = true end
  local active = 0
  local entries = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local status = redis.call('HGET', ARGV[9] .. entries[i], 'status')
    if (status and live[status]) or (not status and tonumber(entries[i + 1]) > now - tonumber(ARGV[8])) then
      active = active + 1
    else
      redis.call('ZREM', KEYS[3], entries[i])
    end
  end
  if active >= tonumber(ARGV[4]) then return {'busy', count, active} end
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[7])
end
local i = 11
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return {'created', count}
"""
# How long a reserved slot without its job record counts as active: the script reserves and writes the
# record at once, but an API of the version before it reserved first, and one that died mid-create
# left a slot that frees itself after this.
RESERVATION_GRACE_S = 60


@dataclass(frozen=True)
class Transition:
    applied: bool
    previous: JobStatus | None  # None: no such job (unknown or expired)


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


class TooManyActiveJobs(Exception):
    """The owner already has `limit` active jobs; nothing was created."""

    def __init__(self, active: int, limit: int):
        super().__init__(f"{active} active jobs, limit {limit}")
        self.active = active
        self.limit = limit


class JobStore:
    """Reads and writes job records. The Redis client is passed in (bytes responses, as RQ needs)."""

    def __init__(self, redis: Redis, ttl_s: int, clock: Callable[[], float] = time.time):
        self.redis = redis
        self.ttl_s = ttl_s
        self.clock = clock
        self._transition = redis.register_script(_TRANSITION)
        self._create = redis.register_script(_CREATE)

    # -- API side -------------------------------------------------------------------------

    def create(
        self,
        owner: str,
        file_ids: list[int],
        delay_s: float,
        enqueue: Callable[[Pipeline, str], None],
        idempotency: tuple[str, str] | None = None,
        max_active: int = 0,
    ) -> tuple[Job, bool]:
        """Store a new queued job and enqueue it in one round trip; return (job, created).

        `enqueue(pipe, job_id)` adds the queue's commands to the job's writes, so a job is never
        recorded without being queued, nor queued without its record. `idempotency` is (key, request
        fingerprint): a retry with the same key and body returns the first job, even when both requests
        arrive at once. `max_active` (0: no cap): with that many of the owner's jobs queued or processing,
        raise TooManyActiveJobs and create nothing; a replay returns before that, so it is not counted.
        The checks and the writes are one script (create_counted), so concurrent creates are counted
        one after the other.
        """
        job, created, _ = self.create_counted(owner, file_ids, delay_s, enqueue, idempotency, max_active)
        return job, created

    def create_counted(
        self,
        owner: str,
        file_ids: list[int],
        delay_s: float,
        enqueue: Callable[[Pipeline, str], None],
        idempotency: tuple[str, str] | None = None,
        max_active: int = 0,
        counter: tuple[str, int, int] | None = None,
    ) -> tuple[Job | None, bool, int]:
        """create(), counting `counter` = (key, TTL seconds, limit) first, all in one round trip: initiate's
        rate limit, its idempotency key, the cap, the job record and RQ's queue entry. Returns (job,
        created, count); past the counter's limit (None, False, count) and nothing else is done.

        The writes are recorded on a pipeline that is never sent (the job's, then `enqueue`'s) and handed
        to one script that checks first (_CREATE): so a caller can add writes of its own to `enqueue`
        (app/metrics.py counts the job there), and they happen exactly when the job is created.
        """
        idem_key = idempotency_key(owner, idempotency[0]) if idempotency else ""
        job_id = str(uuid.uuid4())
        now = self.clock()
        job = Job(
            id=job_id,
            owner=owner,
            status=JobStatus.QUEUED,
            file_ids=list(file_ids),
            delay_s=delay_s,
            created_at=now,
            updated_at=now,
        )
        with self.redis.pipeline() as writes:
            writes.multi()  # as RQ's enqueue expects of a caller's pipeline; only its command list is used
            writes.hset(job_key(job.id), mapping=job.to_hash())
            writes.expire(job_key(job.id), self.ttl_s)
            writes.zadd(owner_index_key(owner), {job.id: now})
            # Each create pushes the index's expiry back, so an active owner's index never expires:
            # drop the entries older than a record lives, so it stays bounded.
            writes.zremrangebyscore(owner_index_key(owner), "-inf", now - self.ttl_s)
            writes.expire(owner_index_key(owner), self.ttl_s)
            if idem_key:
                writes.set(idem_key, json.dumps({"jobId": job.id, "fingerprint": idempotency[1]}), ex=self.ttl_s)
            enqueue(writes, job.id)
            commands = [arg for args, _ in writes.command_stack for arg in (len(args), *args)]
        counter_key, counter_ttl_s, limit = counter or ("", 0, 0)
        outcome, count, *rest = self._create(
            keys=[counter_key, idem_key, active_key(owner) if max_active else ""],
            args=[
                limit,
                counter_ttl_s,
                idempotency[1] if idempotency else "",
                max_active,
                job.id,
                repr(now),
                self.ttl_s,
                RESERVATION_GRACE_S,
                job_key(""),
                " ".join(status.value for status in ACTIVE),
                *commands,
            ],
        )
        outcome = outcome.decode()
        if outcome == "created":
            return job, True, count
        if outcome == "limited":
            return None, False, count
        if outcome == "conflict":
            raise IdempotencyConflict()
        if outcome == "busy":
            raise TooManyActiveJobs(rest[0], max_active)
        replayed = self.get(rest[0].decode())
        if replayed is None:  # expired between the script and this read: the key is free, create (counted once)
            job, created = self.create(owner, file_ids, delay_s, enqueue, idempotency, max_active)
            return job, created, count
        return replayed, False, count

    def get(self, job_id: str) -> Job | None:
        h = self.redis.hgetall(job_key(job_id))
        return Job.from_hash(_decode_hash(h)) if h else None

    def latest(self, job_id: str) -> tuple[str, Job] | None:
        """The record and the event-log id of its last change ('0-0' before the first), read together."""
        with self.redis.pipeline() as pipe:
            pipe.hgetall(job_key(job_id))
            pipe.xrevrange(event_log_key(job_id), count=1)
            h, last = pipe.execute()
        if not h:
            return None
        return (last[0][0].decode() if last else "0-0"), Job.from_hash(_decode_hash(h))

    def changes_after(self, job: Job, log_id: str) -> list[tuple[str, Job]]:
        """The job's logged changes after `log_id` (an entry id, '0-0' for all), each with the record
        as it was then."""
        with self.redis.pipeline() as pipe:
            pipe.xrange(event_log_key(job.id), f"({log_id}", "+")
            pipe.hget(job_key(job.id), "unavailableFileIds")
            entries, unavailable = pipe.execute()
        file_ids, unavailable = json.dumps(job.file_ids), json.loads(unavailable or "[]")
        changes = []
        for entry_id, fields in entries:
            record = _decode_hash(fields)
            record["unavailableFileIds"] = json.dumps(unavailable[: int(record.pop("unavailableCount", 0))])
            changes.append((entry_id.decode(), Job.from_hash({**record, "fileIds": file_ids})))
        return changes

    def wait_terminal(self, job_id: str, timeout_s: float, block_s: float) -> Job | None:
        """The job's record once it is terminal, or as it is after `timeout_s` (None: no such job).

        Blocks on the job's event log (XREAD BLOCK from its last entry, so no change between the read
        and the wait is missed), in slices of at most `block_s`: keep that under the client's socket
        timeout. No sleep, no polling: each slice returns as soon as the job changes.
        """
        deadline = time.monotonic() + timeout_s
        latest = self.latest(job_id)
        if latest is None:
            return None
        last_id, job = latest
        while not job.status.is_terminal:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            block_ms = max(1, int(min(left, block_s) * 1000))
            for _stream, entries in self.redis.xread({event_log_key(job_id): last_id}, block=block_ms) or ():
                last_id = entries[-1][0]
                job = self.get(job_id) or job
        return job

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

    def queue_position(self, queue_key: str, workers: LiveWorkers, job_id: str) -> tuple[int | None, int]:
        """(jobs ahead of `job_id` in RQ's queue list, or None if not in it; live workers), one round trip.
        RQ pushes right and pops left, so the index is the number of jobs ahead."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpos(queue_key, job_id)
            workers.count(pipe)
            position, live = pipe.execute()
        return position, live

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

    def is_stale(self, job: Job, lost_after_s: float) -> bool:
        """A processing job whose worker stopped heartbeating (the sweeper re-queues it)."""
        beat = job.heartbeat_at or job.started_at or job.updated_at
        return job.status is JobStatus.PROCESSING and self.clock() - beat > lost_after_s

    # -- lost workers (any worker sweeps: worker/sweeper.py) --------------------------------

    def lost(self, lost_after_s: float, limit: int = 100) -> list[str]:
        """Ids of processing jobs whose last heartbeat is older than `lost_after_s`, oldest first."""
        cutoff = self.clock() - lost_after_s
        ids = self.redis.zrangebyscore(processing_index_key(), "-inf", cutoff, start=0, num=limit)
        return [i.decode() for i in ids]

    def requeue_or_fail(self, job_id: str, max_attempts: int, reason: str, attempt: int | None = None) -> Job | None:
        """A processing job whose worker was lost goes back to `queued` with the next attempt and its
        progress reset, or, after `max_attempts`, fails with `reason`. `attempt`: only if the job is
        still on that attempt. Returns the job as changed, or None when nothing was changed (another
        sweeper or the job's end came first). Safe to call from any number of processes at once: the
        transition is applied only to the attempt that was read."""
        job = self.get(job_id)
        if job is None:
            self.redis.zrem(processing_index_key(), job_id)  # its record expired: drop the entry
            return None
        if job.status is not JobStatus.PROCESSING or attempt not in (None, job.attempt):
            return None
        now = self.clock()
        if job.attempt < max_attempts:
            changed = self._apply(
                job_id,
                (JobStatus.PROCESSING,),
                JobStatus.QUEUED,
                expect_attempt=job.attempt,
                attempt=job.attempt + 1,
                processedFiles=0,
                unavailableFileIds="[]",
                updatedAt=now,
            )
        else:
            error = f"{reason} (after {job.attempt} attempt{'s' if job.attempt > 1 else ''})"
            changed = self._apply(
                job_id,
                (JobStatus.PROCESSING,),
                JobStatus.FAILED,
                expect_attempt=job.attempt,
                error=error,
                finishedAt=now,
                updatedAt=now,
            )
        return self.get(job_id) if changed.applied else None

    # -- worker side ----------------------------------------------------------------------

    def start(self, job_id: str) -> Transition:
        now = self.clock()
        return self._apply(
            job_id, (JobStatus.QUEUED,), JobStatus.PROCESSING, startedAt=now, heartbeatAt=now, updatedAt=now
        )

    def record_progress(
        self, job_id: str, processed_files: int, unavailable_file_ids: list[int], attempt: int | None = None
    ) -> Transition:
        now = self.clock()
        return self._apply(
            job_id,
            (JobStatus.PROCESSING,),
            None,
            expect_attempt=attempt,
            processedFiles=processed_files,
            unavailableFileIds=json.dumps(unavailable_file_ids),
            heartbeatAt=now,
            updatedAt=now,
        )

    def heartbeat(self, job_id: str, attempt: int | None = None) -> Transition:
        # Not announced: nothing a client sees has changed.
        return self._apply(
            job_id, (JobStatus.PROCESSING,), None, announce=False, expect_attempt=attempt, heartbeatAt=self.clock()
        )

    def complete(
        self, job_id: str, artifact_key: str, size: int, sha256: str, attempt: int | None = None
    ) -> Transition:
        now = self.clock()
        return self._apply(
            job_id,
            (JobStatus.PROCESSING,),
            JobStatus.COMPLETED,
            expect_attempt=attempt,
            artifactKey=artifact_key,
            artifactSize=size,
            artifactSha256=sha256,
            finishedAt=now,
            updatedAt=now,
        )

    def fail(
        self, job_id: str, error: str, allowed: tuple[JobStatus, ...] = ACTIVE, attempt: int | None = None
    ) -> Transition:
        now = self.clock()
        return self._apply(
            job_id, allowed, JobStatus.FAILED, expect_attempt=attempt, error=error, finishedAt=now, updatedAt=now
        )

    def _apply(
        self,
        job_id: str,
        allowed,
        new_status: JobStatus | None,
        announce: bool = True,
        expect_attempt: int | None = None,
        **fields,
    ) -> Transition:
        args: list = [
            " ".join(s.value for s in allowed),
            new_status.value if new_status else "",
            self.ttl_s,
            "1" if announce else "0",
            "" if expect_attempt is None else str(expect_attempt),
            EVENT_LOG_MAXLEN,
        ]
        for name, value in fields.items():
            args += [name, repr(value) if isinstance(value, float) else str(value)]
        keys = [job_key(job_id), events_channel(job_id), processing_index_key(), event_log_key(job_id)]
        applied, current = self._transition(keys=keys, args=args)
        return Transition(bool(applied), JobStatus(current.decode()) if current else None)


def _decode_hash(h: dict[bytes, bytes]) -> dict[str, str]:
    # One Redis client (bytes, as RQ needs) serves both RQ and the job store.
    return {k.decode(): v.decode() for k, v in h.items()}
