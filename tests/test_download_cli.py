"""`dlkit download`, run as a user runs it (the venv's `dlkit` command, in a folder of its own), against
the real stacks through their entry: a verified zip, Ctrl-C then --resume on the same job, --cancel,
and the documented exit codes."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .support import API_KEYS, available_ids, initiate, poll, verify_zip

DLKIT = str(Path(sys.executable).parent / "dlkit")
JOB_LINE = re.compile(r"^job ([0-9a-f-]{36}) at ")


def download(stack, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [DLKIT, "download", *args, "--entry", stack.entry, "--api-key", API_KEYS["alice"]]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_download_writes_a_verified_zip(stack, tmp_path):
    result = download(stack, "70000", "70007", "--out", "x.zip", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    verify_zip((tmp_path / "x.zip").read_bytes(), [70000, 70007])
    assert "verified" in result.stdout


def started(process: subprocess.Popen) -> str:
    """The job id the command prints once its job is started (read as the user would see it)."""
    for line in process.stdout:
        if match := JOB_LINE.match(line):
            return match.group(1)
    raise AssertionError(f"no job line; exit {process.wait()}: {process.stderr.read()}")


def interrupted_run(slow, tmp_path: Path, *extra: str) -> tuple[str, subprocess.CompletedProcess]:
    """Start `dlkit download` on a 2.4 s job, press Ctrl-C (SIGINT) while it follows the job."""
    command = [DLKIT, "download", *available_ids(6), "--entry", slow.stack.entry, "--api-key", API_KEYS["alice"]]
    process = subprocess.Popen(
        [*map(str, command), *extra], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        job_id = started(process)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return job_id, subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_ctrl_c_leaves_the_job_running_and_resume_completes_the_same_job(slow, tmp_path):
    job_id, result = interrupted_run(slow, tmp_path, "--out", "x.zip")
    assert result.returncode == 130, result.stdout + result.stderr
    resume = f"dlkit download --resume {job_id} --out x.zip"
    assert resume in result.stdout and "keeps running" in result.stdout
    assert not (tmp_path / "x.zip").exists()
    with slow.client() as alice:
        assert alice.get(f"/v1/download/status/{job_id}").json()["status"] in ("queued", "processing")
    # The command as printed (--entry and --api-key added: this stack is not the default one).
    resumed = download(slow.stack, *resume.split()[2:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert JOB_LINE.match(resumed.stdout).group(1) == job_id
    verify_zip((tmp_path / "x.zip").read_bytes(), available_ids(6))


def test_ctrl_c_with_cancel_cancels_the_job(slow, tmp_path):
    job_id, result = interrupted_run(slow, tmp_path, "--cancel")
    assert result.returncode == 130, result.stdout + result.stderr
    assert f"job {job_id} cancelled" in result.stdout
    with slow.client() as alice:
        assert alice.get(f"/v1/download/status/{job_id}").status_code == 410


def test_a_failed_job_exits_1(alice, stack, tmp_path):
    result = download(stack, "70001", "--out", "x.zip", cwd=tmp_path)  # 70001 is not available
    assert result.returncode == 1 and "failed" in result.stdout
    assert not list(tmp_path.iterdir())


def test_a_finished_job_resumed_is_downloaded_at_once(alice, stack, tmp_path):
    job_id = initiate(alice, [70014]).json()["jobId"]
    poll(alice, job_id)
    result = download(stack, "--resume", job_id, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    verify_zip((tmp_path / f"dlkit-{job_id}.zip").read_bytes(), [70014])


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no ids"),
        pytest.param(["70000", "--resume", "x"], id="ids and resume"),
        pytest.param(["seven"], id="not an integer"),
        pytest.param(["5"], id="refused by the API"),
        pytest.param(["--resume", "00000000-0000-0000-0000-000000000000"], id="unknown job"),
    ],
)
def test_bad_usage_exits_2(stack, tmp_path, args):
    result = download(stack, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_help_documents_the_exit_codes():
    result = subprocess.run([DLKIT, "download", "--help"], capture_output=True, text=True, check=True)
    text = " ".join(result.stdout.split())
    for code in ["0 the zip is written and verified", "1 the job failed", "2 bad usage", "130 interrupted"]:
        assert code in text


def test_an_unreachable_entry_exits_2(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [DLKIT, "download", "70000", "--entry", f"http://127.0.0.1:{port}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "not reachable" in result.stdout, result.stdout + result.stderr
