"""A component's process lifecycle, with a plain `sleep` as the server (no stack)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psutil
from mirakuru.base import ENV_UUID
from mirakuru.base_env import processes_with_env

from dlkit.kit import ROOT

SLEEPER = """
from pathlib import Path
from dlkit.kit.component import Component, ReadyWhen

def sleeper(log_path: Path) -> Component:
    return Component(
        name="sleeper",
        url=None,
        probe="process",
        log_path=log_path,
        timeout=10,
        env={},
        build=lambda **kwargs: ReadyWhen(["sleep", "60"], ready=lambda pid: True, **kwargs),
    )
"""
namespace: dict = {}
exec(SLEEPER, namespace)  # the same recipe here and in the subprocess below
sleeper = namespace["sleeper"]


def test_no_other_process_exiting_can_kill_a_server(tmp_path):
    """mirakuru's exit hook, in every Python process that imports it, SIGKILLs each process whose
    marker contains the exiting process's pid as a substring. A marker without digits matches no pid."""
    component = sleeper(tmp_path / "sleeper.log")
    component.start()
    try:
        for digit in "0123456789":  # every pid contains one of these
            assert component.pid not in processes_with_env(ENV_UUID, digit)
        # mirakuru still finds it by its own marker, to stop it and its children
        assert component.pid in processes_with_env(ENV_UUID, component.executor._uuid)
    finally:
        component.stop()
    assert not component.running()


def test_a_process_that_exits_without_stopping_its_servers_kills_them(tmp_path):
    script = SLEEPER + textwrap.dedent(f"""
        component = sleeper(Path({str(tmp_path / "sleeper.log")!r}))
        component.start()
        print(component.pid, flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    server = int(result.stdout)
    try:
        psutil.Process(server).wait(timeout=10)  # raises if it is still running
    except psutil.NoSuchProcess:
        pass  # already gone
