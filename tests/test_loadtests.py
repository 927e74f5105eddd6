"""The Locust scenarios (loadtests/) and `dlkit demo`, against real stacks.

Each locustfile runs briefly and standalone, as a reader would run it (`locust -f ...` in a
subprocess), against the session stack. The demo itself runs as the README tells a user to
(tests/test_readme.py), and must reproduce the numbers the kit promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlkit.kit import ROOT

from .conftest import TIME_SCALE
from .support import API_KEYS

pytestmark = pytest.mark.stack

LOADTESTS = ROOT / "loadtests"


def locust(
    stack, tmp_path: Path, locustfile: str, seconds: int = 5, users: int = 3, **env: str
) -> dict[tuple[str, str], dict]:
    """Run one locustfile headless against the stack; its stats entries by (method, name)."""
    out = tmp_path / "stats"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        locustfile,
        "--host",
        stack.entry,
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--stop-timeout",
        "10s",
        "--time-scale",
        str(TIME_SCALE),
        "--json-file",
        str(out),
        "--only-summary",
        "--exit-code-on-error",
        "0",
    ]
    result = subprocess.run(
        command,
        cwd=LOADTESTS,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DLKIT_API_KEY": API_KEYS["alice"], **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {(e["method"], e["name"]): e for e in json.loads(Path(f"{out}.json").read_text())}


def test_sync_records_each_outcome_as_its_own_row(stack, tmp_path):
    entries = locust(stack, tmp_path, "sync.py")
    rows = {name: e for (method, name), e in entries.items() if method == "POST"}
    assert rows and all(name.startswith("start [") for name in rows), rows.keys()
    # At 0.02 the app cuts at 0.6 s of 0.2-2.4 s downloads: both outcomes show up within seconds.
    assert rows["start [504 app]"]["num_failures"] == rows["start [504 app]"]["num_requests"] > 0
    assert rows["start [200]"]["num_failures"] == 0


def test_polling_downloads_and_verifies_every_artifact(stack, tmp_path):
    entries = locust(stack, tmp_path, "polling.py")
    ttf = entries[("JOB", "time-to-file")]
    assert ttf["num_requests"] >= 3 and ttf["num_failures"] == 0
    assert sum(e["num_failures"] for e in entries.values()) == 0
    assert entries[("GET", "/v1/download/status/[id]")]["num_requests"] > 0  # dynamic URLs grouped by name=
    assert entries[("GET", "artifact (S3)")]["num_requests"] == ttf["num_requests"]


def test_retry_storm_reports_each_download_wanted(stack, tmp_path):
    entries = locust(stack, tmp_path, "retry_storm.py", users=4)
    wanted = {name: e for (method, name), e in entries.items() if method == "WANT"}
    assert wanted["sync download"]["num_requests"] > 0
    assert wanted["polling download"]["num_requests"] > 0
    assert wanted["polling download"]["num_failures"] == 0
    assert any(name.startswith("retry: start [504") for _, name in entries)


@pytest.mark.parametrize("shape", ["ramp", "spike"])
def test_shapes_drive_any_scenario(stack, tmp_path, shape):
    entries = locust(stack, tmp_path, "sync.py,shapes.py", seconds=4, users=4, DLKIT_SHAPE=shape)
    assert sum(e["num_requests"] for e in entries.values()) > 0
