"""`dlkit demo`'s bad input, as a user meets it: one clear line, exit 2, no traceback, no load sent.
And the figures it computes from Locust's numbers, as pure logic. (The demo itself runs as the README
tells a user to, in tests/test_readme.py.)"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dlkit.kit import ROOT
from dlkit.kit.chain import config_with_timeouts
from dlkit.kit.demo import Run, Scenario, expected_cut, layer_figures
from dlkit.kit.stack import free_base_port
from dlkit.kit.timeouts import read_chain


def demo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DLKIT_HOME", "TIME_SCALE", "API_KEYS")}
    return subprocess.run(
        [sys.executable, "-m", "dlkit.kit.cli", "demo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_clear_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_an_unreachable_entry_is_one_line_and_exit_2(tmp_path):
    port = free_base_port(span=1)  # nothing listens there
    line = one_clear_line(demo("--entry", f"http://127.0.0.1:{port}", cwd=tmp_path))
    assert f"http://127.0.0.1:{port} is not reachable" in line
    assert not (tmp_path / "reports").exists(), "nothing is written before the input is checked"


def test_an_entry_that_is_not_dlkit_is_one_line_and_exit_2(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        line = one_clear_line(demo("--entry", f"http://127.0.0.1:{server.server_port}", cwd=tmp_path))
    finally:
        server.shutdown()
        server.server_close()
    assert "does not answer GET / like a dlkit API" in line


def test_a_report_folder_that_cannot_be_made_is_refused_before_any_load(tmp_path):
    (tmp_path / "a-file").write_text("in the way")
    line = one_clear_line(demo("--quick", "--report", "a-file/report", cwd=tmp_path))
    assert f"cannot write to {tmp_path / 'a-file' / 'report'}" in line
    assert not (tmp_path / ".dlkit").exists(), "no stack was started"


def _run(entries: list[dict]) -> Run:
    return Run(Scenario("layer-lb", "sync.py,polling.py", 1, 1, 1, ""), entries, None, 1.0, ["python", "-m", "locust"])


def _entry(method: str, name: str, requests: int, failures: int = 0) -> dict:
    return {"method": method, "name": name, "num_requests": requests, "num_failures": failures, "response_times": {}}


def test_a_layer_row_reads_the_cut_share_and_the_clients_status():
    run = _run(
        [
            _entry("POST", "start [200]", 450),
            _entry("POST", "start [504 lb]", 550, 550),
            _entry("GET", "/v1/download/status/[id]", 300),
            _entry("JOB", "time-to-file", 20),
        ]
    )
    expected = {"layer": "lb", "timeout_s": 60.0, "share": 0.5455, "delays_s": (10.0, 120.0)}
    row = layer_figures("lb", run, expected, scale=0.02)
    assert row["requests"] == 1000 and row["timeout_share_measured"] == 0.55
    assert row["client_status"] == 504 == row["client_status_expected"]
    assert row["polling_errors"] == 0 and row["polling_downloads"] == 20
    # No download's overhead measured: the band is the theory alone.
    assert row["chain_overhead_ms"] is None and row["timeout_share_expected_with_overhead"] == 0.5455
    assert row["deviation_points"] == 0.5


def test_the_chains_overhead_widens_a_proxy_rows_expectation_but_not_the_apps():
    # 450 downloads arrived, each 22 ms slower than the app's own time: 22 ms at scale 0.02 is 1.1 s of
    # 'download' against the lb's 60 s, so up to (120 - 58.9) / 110 = 55.5 % may be cut.
    overhead = {**_entry("CHAIN", "overhead", 450), "total_response_time": 450 * 22.0}
    run = _run([_entry("POST", "start [200]", 430), _entry("POST", "start [504 lb]", 570, 570), overhead])
    row = layer_figures("lb", run, {"layer": "lb", "timeout_s": 60.0, "share": 0.5455, "delays_s": (10.0, 120.0)}, 0.02)
    assert row["chain_overhead_ms"] == 22.0 and row["polling_requests"] == 0  # not a polling request
    assert row["timeout_share_expected_with_overhead"] == round((120 - 58.9) / 110, 4)
    # 57.0 % measured, 55.5 % at most expected: 1.45 points outside the band (rounded to 0.1).
    assert row["deviation_points"] == pytest.approx(100 * (0.57 - (120 - 58.9) / 110), abs=0.1)
    # The app's timer starts in the handler: nothing below it to add.
    app = layer_figures(
        "app", run, {"layer": "app", "timeout_s": 30.0, "share": 0.8182, "delays_s": (10.0, 120.0)}, 0.02
    )
    assert app["timeout_share_expected_with_overhead"] == 0.8182


def test_each_layer_config_makes_that_layer_the_tightest(tmp_path):
    """The copies the demo's layers scenario runs: the audit's reader finds the intended layer first."""
    low_high = (10.0, 120.0)
    for layer, timeout_s in (("nginx", 60), ("lb", 60), ("edge", 100)):
        config = config_with_timeouts(tmp_path / layer, {p: 150 for p in ("nginx", "lb", "edge") if p != layer})
        cut = expected_cut(read_chain(config), 150, low_high, scale=0.02)
        assert (cut["layer"], cut["timeout_s"]) == (layer, timeout_s), cut
        assert cut["share"] == round((120 - timeout_s) / 110, 4)
    shipped = expected_cut(read_chain(ROOT), 30, low_high, scale=0.02)
    assert (shipped["layer"], shipped["timeout_s"]) == ("app", 30)
