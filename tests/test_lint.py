"""The code is formatted and linted with ruff (configured in pyproject.toml), as part of the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dlkit.kit import ROOT

RUFF = Path(sys.prefix) / "bin" / "ruff"


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff(command):
    result = subprocess.run([str(RUFF), *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
