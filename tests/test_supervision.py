"""Faults by SIGKILL against a stack started the way users start it (`dlkit up`): the supervisor brings
every component back, workers survive a Redis outage, no job is left running for nobody, and the
client sees only problem JSON meanwhile.

TIME_SCALE 0.05 and every download 120 s long (6 s here), so a job is surely running when a
component is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from dlkit.kit import ROOT
from dlkit.kit.stack import free_base_port

from .support import TERMINAL, available_ids

pytestmark = pytest.mark.stack

SCALE = 0.05


class Up:
    """A stack started by `dlkit up` in a home of its own."""

    def __init__(self, home: Path):
        self.home = home
        self.env = {
            **os.environ,
            "DLKIT_HOME": str(home),
            "DLKIT_BASE_PORT": str(free_base_port()),
            "DOWNLOAD_DELAY_MIN_MS": "120000",
            "RATE_LIMIT_MAX_REQUESTS": "1000000",
        }
        for name in ("API_KEYS", "REDIS_URL", "S3_ENDPOINT", "TIME_SCALE"):
            self.env.pop(name, None)

    def dlkit(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dlkit.kit.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
        )

    def state(self) -> dict:
        return json.loads((self.home / "state.json").read_text())

    def pid(self, component: str) -> int:
        return self.state()["components"][component]["pid"]

    def kill(self, component: str) -> int:
        pid = self.pid(component)
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, component: str, old_pid: int, within_s: float) -> float:
        """Seconds until `dlkit status` says every component is healthy, `component` with a new pid."""
        started = time.monotonic()
        while time.monotonic() - started < within_s:
            status = self.dlkit("status", "--json")
            if status.returncode == 0 and self.pid(component) != old_pid:
                return time.monotonic() - started
            time.sleep(0.2)
        raise AssertionError(f"{component} not back within {within_s} s: {self.dlkit('status').stdout}")


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    stack = Up(tmp_path_factory.mktemp("supervised"))
    # A lost job ends at once (failed), not re-run: a 6 s re-run would not end within these tests' windows.
    # Re-queueing is tested in test_lost_jobs.py.
    stack.env["JOB_MAX_ATTEMPTS"] = "1"
    result = stack.dlkit("up", "--time-scale", str(SCALE), "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        with httpx.Client(base_url=stack.state()["entry"], timeout=10) as client:
            stack.client = client
            yield stack
    finally:
        stack.dlkit("down")


def start_job(client: httpx.Client, start: int) -> str:
    r = client.post("/v1/download/initiate", json={"file_ids": available_ids(1, start=start)})
    assert r.status_code == 202, r.text
    return r.json()["jobId"]


def wait_running(client: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 20
    while client.get(f"/v1/download/status/{job_id}").json()["status"] != "processing":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)


def wait_end(client: httpx.Client, job_id: str, within_s: float) -> tuple[dict, list[httpx.Response], float]:
    """Poll until the job ends: its final document, every non-200 answer seen, and the seconds it took.
    A status poll is what a client does; every error on the way must be problem JSON."""
    started = time.monotonic()
    errors = []
    while time.monotonic() - started < within_s:
        try:
            r = client.get(f"/v1/download/status/{job_id}")
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if r.status_code in (200, 410):
            document = r.json()
            if document["status"] in TERMINAL:
                return document, errors, time.monotonic() - started
        else:
            errors.append(r)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end within {within_s} s")


def assert_problems(responses: list[httpx.Response]) -> None:
    for r in responses:
        assert r.headers["Content-Type"].startswith("application/problem+json"), (r.status_code, r.text[:200])
        assert r.status_code in (502, 503, 504), (r.status_code, r.text[:200])


def completes(client: httpx.Client, start: int, within_s: float = 30) -> None:
    document, _, _ = wait_end(client, start_job(client, start), within_s)
    assert document["status"] == "completed", document


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
