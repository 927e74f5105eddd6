"""Lost workers on a stack started the way users start it (`dlkit up`, whose supervisor restarts killed
workers): a job whose every worker is SIGKILLed mid-job is re-queued by a sweeper and ends, new work
completes, and a job whose workers die on every attempt fails after JOB_MAX_ATTEMPTS with the reason.

TIME_SCALE 0.05 and every download 40 s long (2 s here), so a job is surely running when it is killed.
"""

from __future__ import annotations

import time

import psutil
import pytest
from redis import Redis

from dlkit.jobs import processing_index_key
from dlkit.settings import Settings

from .dlkit_up import SCALE, Up, assert_problems, start_job, started, wait_end

pytestmark = pytest.mark.stack

ATTEMPTS = Settings.model_fields["JOB_MAX_ATTEMPTS"].default
WORKERS = ("worker-1", "worker-2")


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    delays = {"DOWNLOAD_DELAY_MIN_MS": "40000", "DOWNLOAD_DELAY_MAX_MS": "40000"}
    with started(tmp_path_factory.mktemp("lost-jobs"), len(WORKERS), **delays, JOB_MAX_ATTEMPTS=str(ATTEMPTS)) as stack:
        yield stack


def wait_processing(up: Up, job_id: str, attempt: int, within_s: float = 20) -> str:
    """Until the job runs its `attempt`; the name of the worker running it."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        doc = up.client.get(f"/v1/download/status/{job_id}").json()
        assert doc["attempt"] <= attempt and doc["status"] in ("queued", "processing"), doc
        if doc["status"] == "processing" and doc["attempt"] == attempt:
            for name in WORKERS:
                try:
                    if psutil.Process(up.pid(name)).children():
                        return name
                except psutil.NoSuchProcess:
                    pass  # killed, not yet restarted
        time.sleep(0.05)
    raise AssertionError(f"attempt {attempt} of {job_id} never ran")


def kill_worker(up: Up, name: str) -> int:
    """SIGKILL the worker process and its work horse at once (a host lost); its old pid."""
    worker = psutil.Process(up.pid(name))
    for process in [worker, *worker.children(recursive=True)]:
        process.kill()
    # Not waited for: the supervisor reaps the worker, but nothing reaps an orphaned horse at once, and a
    # psutil wait on it could use its whole timeout while the clock of the test runs.
    return worker.pid


def test_every_worker_killed_mid_job_the_job_ends_and_new_work_completes(up):
    job = start_job(up.client, 74_000)
    wait_processing(up, job, attempt=1)
    killed = time.monotonic()
    old = {name: kill_worker(up, name) for name in WORKERS}
    document, errors, _ = wait_end(up.client, job, within_s=10 - (time.monotonic() - killed))
    took_s = time.monotonic() - killed
    assert document["status"] == "completed" and document["attempt"] == 2, document
    assert_problems(errors)
    for name, pid in old.items():
        up.wait_restarted(name, pid, within_s=30)
    started = time.monotonic()
    again, _, _ = wait_end(up.client, start_job(up.client, 74_100), within_s=30)
    assert again["status"] == "completed" and again["attempt"] == 1, again
    print(
        f"every worker killed: the job re-ran and completed {took_s:.1f} s after the kill; "
        f"a new job then completed in {time.monotonic() - started:.1f} s"
    )


def test_a_job_whose_worker_dies_on_every_attempt_fails_after_the_last(up):
    job = start_job(up.client, 75_000)
    started = time.monotonic()
    # The first run loses its work horse (the worker lives and re-queues at once), the others their whole
    # worker (a sweeper of the other worker re-queues once the heartbeat is stale).
    busy = wait_processing(up, job, attempt=1)
    psutil.Process(up.pid(busy)).children()[0].kill()
    for attempt in range(2, ATTEMPTS + 1):
        kill_worker(up, wait_processing(up, job, attempt))
    document, errors, _ = wait_end(up.client, job, within_s=15)
    assert document["status"] == "failed" and document["attempt"] == ATTEMPTS, document
    settings = Settings.from_env({"TIME_SCALE": str(SCALE)})
    assert document["error"] == (
        f"worker lost: no heartbeat for over {settings.stale_after_s:g} s (after {ATTEMPTS} attempts)"
    )
    assert_problems(errors)
    print(f"failed after {ATTEMPTS} attempts, {time.monotonic() - started:.1f} s after it was created")


def test_no_key_of_a_lost_job_is_left_without_a_ttl(up):
    """After the jobs above (re-queued, re-run, failed after the last attempt), RQ's job hashes, which RQ
    persists while a job is started, and the job records all expire again."""
    with Redis.from_url(up.state()["redis_url"]) as redis:
        keys = [k.decode() for pattern in ("rq:job:*", "dlkit:job:*") for k in redis.scan_iter(match=pattern)]
        assert keys
        assert {key: redis.ttl(key) for key in keys if redis.ttl(key) == -1} == {}
        assert redis.zcard(processing_index_key()) == 0  # nothing is processing any more
