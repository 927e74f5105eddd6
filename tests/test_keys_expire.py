"""Every key the kit writes in Redis expires, after jobs of every kind: completed, failed, cancelled
while queued, cancelled while running, downloaded. Only RQ's and the accounting's fixed, bounded
bookkeeping keys persist, each listed below with the reason.

On a stack of its own, so that the keys seen are exactly those of these jobs; every job takes the
longest delay (2.4 s at this scale), so there is time to act while one is queued or running."""

from __future__ import annotations

import time
from fnmatch import fnmatchcase

import pytest
from redis import Redis
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus

from dlkit import accounting
from dlkit.settings import Settings

from .conftest import STACK_ENV, start_stack
from .support import available_ids, client_for, initiate, poll

pytestmark = pytest.mark.stack  # a stack of its own

# Keys meant to persist: (pattern, why that is bounded).
PERSISTENT = [
    ("rq:queues", "RQ's set of queue names: one entry per queue"),
    ("rq:queue:*", "RQ's queue lists: emptied as workers take jobs, and gone when empty"),
    ("rq:workers", "RQ's set of live workers: a worker leaves it when it stops or its own key expires"),
    ("rq:workers:*", "the same, per queue"),
    (
        "rq:wip:*",
        "RQ's job registries (sorted sets): each entry carries its own expiry as its score,"
        " and RQ's maintenance drops the expired ones",
    ),
    ("rq:finished:*", "the same"),
    ("rq:failed:*", "the same"),
    ("rq:canceled:*", "the same"),
    ("rq:scheduled:*", "the same"),
    ("rq:deferred:*", "the same"),
    *[
        (key, "one of a fixed set of counters (dlkit/accounting.py) that `dlkit demo` resets")
        for key in accounting.KEYS
    ],
]
# Keys of a job (its record, its RQ job, its result) must always expire.
MUST_EXPIRE = [
    "dlkit:job:*",
    "dlkit:workers:*",
    "rq:job:*",
    "rq:results:*",
    accounting.downloaded_ids_key(0).replace(":0", ":*"),
]


def persistent_reason(key: str) -> str | None:
    return next((why for pattern, why in PERSISTENT if fnmatchcase(key, pattern)), None)


def test_no_job_key_is_listed_as_persistent():
    for key in ["dlkit:job:1", "dlkit:job:1:cancel", "rq:job:1", "rq:results:1", accounting.downloaded_ids_key(1)]:
        assert persistent_reason(key) is None, key
    assert persistent_reason("dlkit:job:1:log") is None


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    env = {"DOWNLOAD_DELAY_MIN_MS": "120000"}
    stack = start_stack(tmp_path_factory.mktemp("keys-stack"), **env)
    try:
        settings = Settings.from_env({**stack.client_env(), **STACK_ENV, **env})
        redis = Redis.from_url(settings.REDIS_URL)
        yield stack, redis
        redis.close()
    finally:
        stack.stop()


def wait_rq_done(redis: Redis, job_id: str, timeout_s: float = 20) -> None:
    """Until RQ has finished its own bookkeeping of the job (it sets the job's TTL then).
    RQ publishes no event for this, so poll it."""
    deadline = time.monotonic() + timeout_s
    while RQJob.fetch(job_id, connection=redis).get_status() not in (RQStatus.FINISHED, RQStatus.FAILED):
        assert time.monotonic() < deadline, f"RQ still on {job_id}"
        time.sleep(0.05)


def test_every_key_expires_after_jobs_of_every_kind(kit):
    stack, redis = kit

    def processing(doc):
        return doc["status"] == "processing"

    with client_for(stack, "alice") as alice:
        completed = initiate(alice, available_ids(2)).json()["jobId"]
        failed = initiate(alice, [70001, 70002]).json()["jobId"]  # no file available
        assert poll(alice, completed)[-1]["status"] == "completed"
        assert poll(alice, failed)[-1]["status"] == "failed"

        # Downloaded, twice: the second download must not push the downloaded-ids set's expiry back.
        ids_key = accounting.downloaded_ids_key(int(time.time() // accounting.IDS_WINDOW_S))
        assert alice.get(f"/v1/download/{completed}").status_code == 302
        expires_at_ms = redis.pexpiretime(ids_key)
        assert expires_at_ms > time.time() * 1000
        assert alice.get(f"/v1/download/{completed}").status_code == 302
        assert redis.pexpiretime(ids_key) == expires_at_ms

        # Both workers busy, so a third job stays queued.
        running = initiate(alice, available_ids(2)).json()["jobId"]
        busy = initiate(alice, available_ids(2, start=80_000)).json()["jobId"]
        poll(alice, running, until=processing)
        poll(alice, busy, until=processing)
        queued = initiate(alice, available_ids(2, start=90_000)).json()["jobId"]
        assert alice.post(f"/v1/download/cancel/{queued}").json()["status"] == "cancelled"
        assert RQJob.fetch(queued, connection=redis).get_status() == RQStatus.QUEUED  # no worker ever took it
        assert alice.post(f"/v1/download/cancel/{running}").json()["status"] == "cancelled"
        assert poll(alice, busy)[-1]["status"] == "completed"

    for job_id in (completed, failed, running, busy):
        wait_rq_done(redis, job_id)

    without_ttl, seen = {}, set()
    for raw in redis.scan_iter(count=1000):
        key = raw.decode()
        seen.add(key)
        if redis.ttl(key) == -1 and persistent_reason(key) is None:
            without_ttl[key] = redis.type(key).decode()
    assert not without_ttl, f"keys that never expire: {without_ttl}"
    for job_id in (completed, failed, running, busy, queued):
        assert f"dlkit:job:{job_id}" in seen and f"rq:job:{job_id}" in seen
    for job_id in (completed, failed, running, busy):  # each changed, so each has an event log (SSE ids)
        assert f"dlkit:job:{job_id}:log" in seen
    for pattern in MUST_EXPIRE:
        assert any(fnmatchcase(key, pattern) for key in seen), pattern
