"""Faults by SIGKILL against a stack started the way users start it (`dlkit up`): the supervisor brings
every component back, workers survive a Redis outage, no job is left running for nobody, and the
client sees only problem JSON meanwhile.

TIME_SCALE 0.05 and every download 120 s long (6 s here), so a job is surely running when a
component is killed.
"""

from __future__ import annotations

import time

import psutil
import pytest

from .dlkit_up import assert_problems, completes, start_job, started, wait_end, wait_running

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    # A lost job ends at once (failed), not re-run: a 6 s re-run would not end within these tests' windows.
    # Re-queueing is tested in test_lost_jobs.py.
    with started(tmp_path_factory.mktemp("supervised"), 2, JOB_MAX_ATTEMPTS="1") as stack:
        yield stack


def test_workers_survive_a_valkey_kill_and_every_job_ends(up):
    job = start_job(up.client, 71_000)
    wait_running(up.client, job)
    workers = {name: up.pid(name) for name in ("worker-1", "worker-2")}
    old = up.kill("valkey")
    back_s = up.wait_restarted("valkey", old, within_s=30)
    document, errors, _ = wait_end(up.client, job, within_s=60)
    assert document["status"] in ("completed", "failed") and (document["status"] == "completed" or document["error"])
    assert_problems(errors)
    # The same worker processes: they waited for Valkey instead of quitting.
    assert {name: up.pid(name) for name in workers} == workers
    assert all(psutil.pid_exists(pid) for pid in workers.values())
    completes(up.client, 71_100)
    print(f"valkey back in {back_s:.1f} s; the running job ended {document['status']}")


def test_a_killed_worker_is_restarted_and_its_job_ends(up):
    job = start_job(up.client, 72_000)
    wait_running(up.client, job)
    busy = next(name for name in ("worker-1", "worker-2") if psutil.Process(up.pid(name)).children())
    old = up.kill(busy)
    document, errors, took_s = wait_end(up.client, job, within_s=10)
    assert document["status"] == "failed" and document["error"], document
    assert_problems(errors)
    up.wait_restarted(busy, old, within_s=30)
    completes(up.client, 72_100)
    print(f"job of the killed worker ended in {took_s:.1f} s: {document['error']}")


def test_seaweedfs_killed_health_says_so_and_it_comes_back(up):
    job = start_job(up.client, 73_000)
    wait_running(up.client, job)
    old = up.kill("seaweedfs")
    started = time.monotonic()
    seen_unhealthy = False
    while time.monotonic() - started < 10 and not seen_unhealthy:
        r = up.client.get("/health")
        seen_unhealthy = r.status_code == 503 and r.json()["checks"]["storage"] == "error"
        time.sleep(0.1)
    # Restarted so fast that /health may never see it down; the supervisor's restart is the proof.
    up.wait_restarted("seaweedfs", old, within_s=60)
    document, errors, _ = wait_end(up.client, job, within_s=60)
    assert document["status"] in ("completed", "failed"), document
    assert_problems(errors)
    completes(up.client, 73_100)
    print(f"seaweedfs: /health saw it down: {seen_unhealthy}")
