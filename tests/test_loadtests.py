"""The Locust scenarios (loadtests/) and `dlkit demo`, against real stacks.

Each locustfile runs briefly and standalone, as a reader would run it (`locust -f ...` in a
subprocess), against the session stack. The demo runs `--quick` on a fresh stack of its own and
must reproduce the numbers the kit promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib import image

from dlkit.stack import ROOT, free_base_port

from .conftest import TIME_SCALE
from .support import API_KEYS

pytestmark = pytest.mark.stack

LOADTESTS = ROOT / "loadtests"


def locust(stack, tmp_path: Path, locustfile: str, seconds: int = 5, users: int = 3, **env: str) -> dict[tuple[str, str], dict]:
    """Run one locustfile headless against the stack; its stats entries by (method, name)."""
    out = tmp_path / "stats"
    command = [
        sys.executable, "-m", "locust", "-f", locustfile, "--host", stack.entry, "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", "10s",
        "--time-scale", str(TIME_SCALE), "--json-file", str(out), "--only-summary", "--exit-code-on-error", "0",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=LOADTESTS, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "DLKIT_API_KEY": API_KEYS["alice"], **env})  # fmt: skip
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


def test_demo_quick_reproduces_the_problem_and_proves_the_fix(tmp_path):
    out = tmp_path / "out.json"
    report = tmp_path / "report"
    env = {**os.environ, "DLKIT_HOME": str(tmp_path / "home"), "DLKIT_BASE_PORT": str(free_base_port())}
    for name in ("TIME_SCALE", "API_KEYS", "RATE_LIMIT_MAX_REQUESTS", "REDIS_URL", "S3_ENDPOINT"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "dlkit.cli", "demo", "--quick", "--json", str(out),
                             "--report", str(report)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary == json.loads((report / "summary.json").read_text())
    assert summary["time_scale"] == 0.02

    sync = summary["scenarios"]["sync"]
    assert sync["requests"] >= 300, "too few requests to measure the cut share within 5 points"
    assert abs(sync["timeout_share_measured"] - sync["timeout_share_expected"]) <= 0.05
    assert sync["timeout_share_expected"] == pytest.approx(90 / 110, abs=1e-3)  # the app, at 30 s
    assert sync["by_layer"] == {"app": sync["requests"] - sync["ok"]}
    assert sync["by_status"]["504"] == sync["requests"] - sync["ok"]
    assert sync["wasted_backend_seconds"] > 0

    polling = summary["scenarios"]["polling"]
    assert polling["errors"] == 0
    assert polling["downloads"] == polling["completed"] == polling["verified"] > 0
    assert polling["wasted_backend_seconds"] == 0
    assert 0 < polling["time_to_file_p50_s"] <= polling["time_to_file_p95_s"]

    storm = summary["scenarios"]["retry_storm"]
    assert storm["polling_amplification"] == 1.0
    assert storm["sync_amplification"] > 1

    for chart in ("outcomes.png", "time_to_file.png"):
        assert image.imread(report / chart).shape[0] > 100
    for scenario in ("sync", "polling", "retry_storm"):
        assert (report / f"{scenario}_stats.csv").exists() and (report / f"{scenario}.html").exists()
    assert "before / after" in result.stdout
    # The demo stops the stack it started.
    assert not (tmp_path / "home" / "state.json").exists()
