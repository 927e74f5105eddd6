"""README.md as a tested artefact: its commands, run as a new user runs them.

Every command in the README's `sh` blocks runs here exactly as written, in a fresh copy of the
repository (the files a clone has), from its root, with a clean environment, in README order; or it
carries the README's own mark `# not run by the tests: <why>`, on its line or on the first line of
its block, and the reason names the check that covers it instead. The one substitution is the quick
variant the README itself offers (`make demo` runs as `make demo QUICK=1`).

The copy shares this test run's virtual environment (`.venv` is a link to it), so `make` finds it
installed and the copy's commands start from `.venv/bin/...` as the README says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from matplotlib import image

from dlkit.kit.timeouts import ROOT

pytestmark = pytest.mark.stack

README = ROOT / "README.md"
NOT_RUN = "# not run by the tests:"
# The quick variants the README offers for its long commands.
QUICK = {"make demo": "make demo QUICK=1"}
# What a new user's shell does not have: settings of this test run that would change the commands.
CLEAN_ENV = (
    "TIME_SCALE",
    "API_KEYS",
    "RATE_LIMIT_MAX_REQUESTS",
    "REDIS_URL",
    "S3_ENDPOINT",
    "DLKIT_HOME",
    "DLKIT_BASE_PORT",
    "DLKIT_API_KEY",
    "PYTEST_CURRENT_TEST",
    "VIRTUAL_ENV",
)


def blocks(text: str) -> list[list[str]]:
    """The README's ```sh blocks, each a list of logical lines (backslash continuations joined)."""
    found = []
    for body in re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        found.append(body.replace("\\\n", " ").splitlines())
    return found


def commands(text: str) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """(runnable blocks, each a list of commands; [(command, reason)] of those marked not run)."""
    runnable, skipped = [], []
    for lines in blocks(text):
        marked = lines and lines[0].strip().startswith(NOT_RUN)
        reason = lines[0].strip()[len(NOT_RUN) :].strip() if marked else ""
        run = []
        for line in lines:
            command, _, comment = line.partition(" #")
            command = command.strip()
            if not command or command.startswith("#"):
                continue
            if marked or NOT_RUN in line:
                why = reason or line[line.index(NOT_RUN) + len(NOT_RUN) :].strip()
                skipped.append((command, why))
            else:
                run.append(command)
        if run:
            runnable.append(run)
    return runnable, skipped


def test_every_command_is_run_or_says_why_not():
    runnable, skipped = commands(README.read_text())
    flat = [command for block in runnable for command in block]
    assert flat, "no runnable command found in README.md"
    for command, why in skipped:
        assert why, f"{command!r} is marked not run without a reason"
        for path in re.findall(r"tests/test_\w+\.py", why):
            assert (ROOT / path).exists(), f"{command!r}: {path} does not exist"
    for long, quick in QUICK.items():
        if long in flat:
            assert quick in flat, f"README offers {long!r} but not its quick variant {quick!r}"


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    """The files a clone of this checkout has (tracked, plus new files not ignored), mtimes kept."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    copy = tmp_path_factory.mktemp("fresh") / "dlkit"
    for relative in filter(None, listed):
        source = ROOT / relative
        if source.is_file():
            (copy / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / relative)
    venv = Path(sys.prefix)
    assert (venv / "bin" / ".installed").exists(), "run the tests from the venv `make test` makes"
    (copy / ".venv").symlink_to(venv)
    yield copy
    # A block that failed half-way may have left its stack up: stop it, as a user would.
    subprocess.run([str(venv / "bin" / "dlkit"), "down"], cwd=copy, capture_output=True, timeout=120)


def _leftovers(copy: Path) -> list[str]:
    """Processes the README's commands may have left: any that names the copy or a layers stack."""
    left = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(copy) in cmdline or "dlkit-layers-" in cmdline:
            left.append(f"{process.info['pid']}: {cmdline[:200]}")
    return left


def test_the_readme_commands_work_from_a_fresh_copy(fresh_copy):
    runnable, _ = commands(README.read_text())
    env = {name: value for name, value in os.environ.items() if name not in CLEAN_ENV}
    ran: list[str] = []
    for block in runnable:
        todo = [QUICK.get(command, command) for command in block]
        todo = [command for index, command in enumerate(todo) if command not in ran + todo[:index]]
        ran += todo
        script = "set -euo pipefail\n" + "\n".join(todo)
        result = subprocess.run(
            ["bash", "-c", script], cwd=fresh_copy, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{block}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        # Nothing any block started is left behind (`dlkit up` is always followed by `down`).
        assert not _leftovers(fresh_copy), _leftovers(fresh_copy)
    assert "make demo QUICK=1" in ran

    # The demo, as a user runs it: its report under the copy's reports/, with the summary and charts.
    (report,) = (fresh_copy / "reports").iterdir()
    summary = json.loads((report / "summary.json").read_text())
    for chart in ("outcomes.png", "time_to_file.png", "layers.png"):
        assert image.imread(report / chart).shape[0] > 100, chart
    assert summary["time_scale"] == 0.02
    assert not (fresh_copy / ".dlkit" / "state.json").exists()
    check_demo_summary(summary)


def check_demo_summary(summary: dict) -> None:
    """What the kit promises from `dlkit demo --quick`: the problem reproduced, the fix proven,
    every layer of the chain cutting its share with its own status."""
    sync = summary["scenarios"]["sync"]
    assert sync["requests"] >= 300, "too few requests to measure the cut share within 5 points"
    assert abs(sync["timeout_share_measured"] - sync["timeout_share_expected"]) <= 0.05
    assert sync["timeout_share_expected"] == pytest.approx(90 / 110, abs=1e-3)  # the app, at 30 s
    assert sync["by_layer"] == {"app": sync["requests"] - sync["ok"]}
    assert sync["wasted_backend_seconds"] > 0

    polling = summary["scenarios"]["polling"]
    assert polling["errors"] == 0
    assert polling["downloads"] == polling["completed"] == polling["verified"] > 0
    assert polling["wasted_backend_seconds"] == 0
    # Time to file split by the workers' clocks (how much is queue wait depends on the machine's load).
    split = polling["time_to_file_split"]
    assert split["work_s"] > 0 and split["queue_wait_s"] >= 0 and split["overhead_s"] >= 0, split
    assert split["queue_wait_s"] + split["work_s"] <= polling["time_to_file_mean_s"] + 0.01, (split, polling)

    storm = summary["scenarios"]["retry_storm"]
    assert storm["polling_amplification"] == 1.0
    assert storm["sync_amplification"] > 1

    layers = {row["layer"]: row for row in summary["scenarios"]["layers"]}
    assert list(layers) == ["app", "nginx", "lb", "edge"]
    for name, row in layers.items():
        assert row["client_status"] == {"edge": 524}.get(name, 504), row
        assert row["by_outcome"].keys() <= {"200", f"{row['client_status']} {name}"}, row
        assert row["timeout_share_expected"] == pytest.approx((120 - row["timeout_s"]) / 110, abs=1e-3)
        # Outside [theory, theory with the chain's measured overhead] by binomial noise alone: about
        # 1 point (1 sigma) on this many requests. 5 points: a CI run never fails on chance.
        assert row["timeout_share_expected"] <= row["timeout_share_expected_with_overhead"], row
        assert row["deviation_points"] <= 5, row
        # Polling through the same chain: every download arrives, verified. A status poll that waits
        # behind the sync load past nginx's scaled floor (1 s; 5 s in production) is a 504 the real
        # chain would not give: rare, counted, and bounded here.
        assert row["polling_verified"] == row["polling_downloads"] > 0, row
        assert row["polling_errors"] <= 0.01 * row["polling_requests"], row
