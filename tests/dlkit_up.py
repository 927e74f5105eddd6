"""A stack started the way users start it (`dlkit up`, in a home of its own), and what a client checks
while faults hit it: the fault tests of test_supervision.py and test_lost_jobs.py share these."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from dlkit.kit import ROOT
from dlkit.kit.stack import free_base_port

from .support import TERMINAL, available_ids

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


@contextmanager
def started(home: Path, workers: int, **env: str) -> Iterator[Up]:
    """`dlkit up` at SCALE with `workers` and `env`; `dlkit down` after. The stack's client is `.client`."""
    stack = Up(home)
    stack.env.update(env)
    result = stack.dlkit("up", "--time-scale", str(SCALE), "--workers", str(workers))
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
