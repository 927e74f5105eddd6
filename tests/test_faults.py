"""Faults get a clear error or a retry, never a hang, a stack trace, or a job stuck forever.

Runs on the slow stack (every job 2.4 s); each test starts again whatever it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from dlkit.jobs import job_key
from dlkit.storage import artifact_key, s3_client

from .support import api_url, available_ids, eventually, initiate, poll, scrape, total, value, worker_urls

ROOT = Path(__file__).resolve().parents[1]


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


def test_a_killed_work_horse_requeues_its_job_at_once(slow):
    with slow.client() as alice:
        job_id = initiate(alice, available_ids(3)).json()["jobId"]
        assert poll(alice, job_id, until={"processing"})[-1]["attempt"] == 1
        requeued = total(worker_urls(slow.stack), "dlkit_jobs_requeued_total", reason="worker_died")
        _, horse = _busy_horse(slow)
        horse.kill()
        # Re-queued at once: the first poll after the kill may already see the second attempt.
        seen = poll(alice, job_id, timeout_s=10)
        assert seen[-1]["status"] == "completed" and seen[-1]["attempt"] == 2, seen[-1]
        assert total(worker_urls(slow.stack), "dlkit_jobs_requeued_total", reason="worker_died") == requeued + 1


def _record(slow, job_id: str) -> dict:
    return {k.decode(): v.decode() for k, v in slow.redis.hgetall(job_key(job_id)).items()}


def _incomplete_uploads(s3, bucket: str, key: str) -> list[str]:
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    return [u["UploadId"] for u in uploads if u["Key"] == key]


def test_a_dead_worker_s_job_is_requeued_without_a_poll_and_its_partial_upload_aborted(slow):
    """The whole worker dies (host lost): the other worker's sweeper re-queues the job once its heartbeat
    is stale, with no client polling, aborts its partial upload, and runs it again."""
    s3 = s3_client(slow.settings)
    with slow.client() as alice:
        job_id = initiate(alice, available_ids(40)).json()["jobId"]
        key = artifact_key(job_id)
        # 40 files make about 20 MiB: a part (8 MiB) is stored after about 16 of them.
        poll(alice, job_id, until=lambda doc: doc["processedFiles"] >= 20)
        assert _incomplete_uploads(s3, slow.settings.S3_BUCKET_NAME, key), "no partial upload to abort"
        name, horse = _busy_horse(slow)
        worker = _worker_process(slow, name)
        killed = time.monotonic()
        worker.kill()
        horse.kill()
        # Only the worker is ours to reap: the horse's parent is gone, so it waits for init (a psutil wait
        # on it could last its whole timeout while the re-queued job already runs again).
        psutil.wait_procs([worker], timeout=5)
        try:
            # No status read meanwhile: only the record in Redis, as a sweeper changes it. Re-queued, the
            # job may be processing again at once, on its next attempt.
            while (record := _record(slow, job_id))["status"] == "processing" and record["attempt"] == "1":
                assert time.monotonic() - killed < slow.settings.stale_after_s + 2, "not re-queued"
                time.sleep(0.05)
            detected_s = time.monotonic() - killed
            final = poll(alice, job_id, timeout_s=30)[-1]
            assert final["status"] == "completed" and final["attempt"] == 2, final
            assert final["progress"] == 100 and final["processedFiles"] == 40
            assert _incomplete_uploads(s3, slow.settings.S3_BUCKET_NAME, key) == []
            print(f"lost job re-queued {detected_s:.2f} s after the kill (stale after {slow.settings.stale_after_s} s)")
        finally:
            s3.close()
            slow.stack.stop_component(name)
            slow.stack.start_component(name)


def test_a_queued_job_with_no_live_worker_says_so_and_health_is_degraded(slow):
    workers = [name for name in slow.stack.components if name.startswith("worker")]
    with slow.client() as alice:
        for name in workers:
            slow.stack.stop_component(name)
        try:
            job_id = initiate(alice, [70000]).json()["jobId"]
            document = alice.get(f"/v1/download/status/{job_id}").json()
            assert document["status"] == "queued"
            assert document["note"].startswith("no live worker"), document
            listed = alice.get("/v1/downloads").json()["jobs"]
            assert next(doc for doc in listed if doc["jobId"] == job_id)["note"] == document["note"]
            health = alice.get("/health")
            assert health.status_code == 200
            assert health.json() == {
                "status": "degraded",
                "checks": {"storage": "ok", "redis": "ok", "workers": "none"},
            }
        finally:
            for name in workers:
                slow.stack.start_component(name)
        final = poll(alice, job_id)[-1]
        assert final["status"] == "completed" and final["note"] is None
        assert alice.get("/health").json()["status"] == "healthy"


def test_a_worker_killed_outside_the_kit_stops_counting_as_live(slow, tmp_path):
    """Compose or ECS replace a killed worker (a container's end is a SIGKILL of all its processes), and
    no `dlkit up` cleans up after it; RQ lists the dead worker for minutes (its key expires 60 s past its
    last heartbeat or more, and only a maintenance pass takes it off the queue's set). The API must not
    count it: within JOB_STALE_AFTER_S /health is degraded, the job it held says no live worker is left,
    and the gauge calls it lost."""
    workers = [name for name in slow.stack.components if name.startswith("worker")]
    for name in workers:
        slow.stack.stop_component(name)
    # A worker as compose runs it: no name of ours, no supervisor.
    with open(tmp_path / "worker.log", "wb") as log:
        outside = subprocess.Popen(
            [sys.executable, "-m", "worker"],
            cwd=ROOT,
            env={**os.environ, **slow.stack.client_env()},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with slow.client() as alice:
            assert eventually(lambda: alice.get("/health").json()["status"] == "healthy"), "the worker never came"
            job_id = initiate(alice, [70000]).json()["jobId"]
            poll(alice, job_id, until={"processing"})
            for process in [*psutil.Process(outside.pid).children(recursive=True), psutil.Process(outside.pid)]:
                process.send_signal(signal.SIGKILL)
            outside.wait(timeout=10)
            killed = time.monotonic()

            def degraded():
                health = alice.get("/health")
                return health.json() if health.json()["status"] == "degraded" else None

            within_s = slow.settings.stale_after_s + 2 * slow.settings.sweep_interval_s + 2
            assert eventually(degraded, timeout_s=within_s) == {
                "status": "degraded",
                "checks": {"storage": "ok", "redis": "ok", "workers": "none"},
            }, f"still counted live {time.monotonic() - killed:.1f} s after the kill"

            # The job's own heartbeat may be a beat younger than the worker's last stamp: lost a moment later.
            def note() -> str:
                return alice.get(f"/v1/download/status/{job_id}").json()["note"] or ""

            lost_job = "worker lost and no live worker"
            assert eventually(lambda: note().startswith(lost_job), timeout_s=within_s), note()
            gauge = scrape(api_url(slow.stack))
            assert value(gauge, "dlkit_workers", state="lost") == 1
            assert value(gauge, "dlkit_workers", state="busy") + value(gauge, "dlkit_workers", state="idle") == 0
    finally:
        if outside.poll() is None:
            outside.kill()
            outside.wait()
        for name in workers:
            slow.stack.start_component(name)
    with slow.client() as alice:
        final = poll(alice, job_id)[-1]
        assert final["status"] == "completed" and final["attempt"] == 2, final
        assert alice.get("/health").json()["status"] == "healthy"
