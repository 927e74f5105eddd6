"""Faults get a clear error or a retry, never a hang, a stack trace, or a job stuck forever.

Runs on the slow stack (every job 2.4 s); each test starts again whatever it stopped.
"""

from __future__ import annotations

import time

import psutil
import pytest

from .support import available_ids, initiate, poll


def test_redis_down_gives_503_quickly_and_the_api_recovers(slow):
    with slow.client() as alice:
        job_id = initiate(alice, [70000]).json()["jobId"]
        assert poll(alice, job_id)[-1]["status"] == "completed"

        slow.stack.stop_component("valkey")
        try:
            for method, path, body in [
                ("GET", f"/v1/download/status/{job_id}", None),
                ("POST", "/v1/download/initiate", {"file_ids": [70000]}),
                ("GET", "/v1/downloads", None),
            ]:
                started = time.monotonic()
                r = alice.request(method, path, json=body)
                assert r.status_code == 503, r.text
                assert r.headers["Content-Type"] == "application/problem+json"
                assert r.json()["type"] == "urn:dlkit:problem:redis-unavailable"
                assert "Retry-After" in r.headers
                assert time.monotonic() - started < 5, "a dead Redis must not hang the API"
            health = alice.get("/health")
            assert health.status_code == 503
            assert health.json() == {
                "status": "unhealthy",
                "checks": {"storage": "ok", "redis": "error", "workers": "error"},
            }
        finally:
            slow.stack.start_component("valkey")

        # Back: the record survived (append-only file), and new work flows again.
        assert alice.get(f"/v1/download/status/{job_id}").json()["status"] == "completed"
        assert alice.get("/health").status_code == 200
        again = initiate(alice, [70000]).json()["jobId"]
        assert poll(alice, again)[-1]["status"] == "completed"


def test_s3_down_during_a_job_fails_it_with_a_clear_error(slow):
    with slow.client() as alice:
        job_id = initiate(alice, available_ids(3)).json()["jobId"]
        poll(alice, job_id, until={"processing"})
        slow.stack.stop_component("seaweedfs")
        try:
            final = poll(alice, job_id, timeout_s=60)[-1]
            assert final["status"] == "failed"
            assert final["error"].startswith("storage unavailable")
            assert final["downloadUrl"] is None and final["artifact"] is None
            health = alice.get("/health")
            assert health.status_code == 503 and health.json()["checks"]["storage"] == "error"
        finally:
            slow.stack.start_component("seaweedfs")
        assert alice.get("/health").status_code == 200


def _worker_process(slow, name: str) -> psutil.Process:
    return psutil.Process(slow.stack.components[name].pid)


def _busy_horse(slow, timeout_s: float = 10) -> tuple[str, psutil.Process]:
    """The worker component whose work horse (RQ's forked child) is running a job."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name in [n for n in slow.stack.components if n.startswith("worker")]:
            children = _worker_process(slow, name).children()
            if children:
                return name, children[0]
        time.sleep(0.02)
    pytest.fail("no worker picked up the job")


def test_a_killed_work_horse_fails_its_job_at_once(slow):
    with slow.client() as alice:
        job_id = initiate(alice, available_ids(3)).json()["jobId"]
        poll(alice, job_id, until={"processing"})
        _, horse = _busy_horse(slow)
        horse.kill()
        final = poll(alice, job_id, timeout_s=10)[-1]
        assert final["status"] == "failed"
        assert "worker process died" in final["error"]


def test_a_dead_worker_does_not_leave_its_job_processing(slow):
    """The whole worker dies (host lost): the watchdog fails the job once its heartbeat is stale."""
    with slow.client() as alice:
        job_id = initiate(alice, available_ids(40)).json()["jobId"]
        poll(alice, job_id, until={"processing"})
        name, horse = _busy_horse(slow)
        worker = _worker_process(slow, name)
        worker.kill()
        horse.kill()
        psutil.wait_procs([worker, horse], timeout=5)
        try:
            final = poll(alice, job_id, timeout_s=slow.settings.stale_after_s + 10)[-1]
            assert final["status"] == "failed"
            assert final["error"].startswith("worker lost")
        finally:
            slow.stack.stop_component(name)
            slow.stack.start_component(name)
