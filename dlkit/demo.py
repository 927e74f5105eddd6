"""`dlkit demo`: the problem and the fix side by side, with numbers.

Runs the Locust scenarios of loadtests/ headless through the emulated chain, one after the other:

    sync         naive clients on the legacy `start`: which layer cuts what share (vs (120 - T) / 110)
    polling      initiate + status (Retry-After) + redirect to S3 + byte check: time-to-file
    retry_storm  clients retrying on errors, on both APIs: backend work started per download wanted

Each scenario is a `locust` subprocess, the same command a reader can copy (it is printed), rather
than Locust as a library: Locust monkey-patches the whole process for gevent at import, and this
process also drives the stack (subprocesses, pipes, signals); and the subprocess writes the CSV,
HTML and JSON reports itself. Progress comes from the stats CSV Locust rewrites every second.

Between scenarios the backend accounting (dlkit/accounting.py) is reset and, after each, read once
the work in flight has settled: wasted seconds and amplification come from the server's counters,
not from guesses on the client side.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dlkit import accounting
from dlkit.chain import FLOOR_S
from dlkit.settings import Settings
from dlkit.timeouts import ROOT, cut_share, read_chain

LOADTESTS = ROOT / "loadtests"
LONGEST_DOWNLOAD_S = 120  # real seconds (DOWNLOAD_DELAY_MAX_MS): what in-flight work may still need
# RATE_LIMIT_MAX_REQUESTS for a stack the demo starts: each Locust user is one client to the
# per-client limiter, and a polling user at TIME_SCALE 0.02 polls ten times a second.
DEMO_RATE_LIMIT = 1_000_000


@dataclass
class Scenario:
    name: str
    locustfile: str
    users: int
    run_s: float
    stop_timeout_s: float  # users finish the download in hand, so no job is left for nobody
    title: str


@dataclass
class Run:
    """What one scenario produced: Locust's stats entries and the backend's accounting."""

    scenario: Scenario
    entries: list[dict[str, Any]]
    backend: dict[str, Any]
    seconds: float
    command: list[str] = field(default_factory=list)

    def rows(self, method: str | None = None, prefix: str = "") -> list[dict[str, Any]]:
        return [e for e in self.entries if (method is None or e["method"] == method) and e["name"].startswith(prefix)]

    def row(self, name: str, method: str) -> dict[str, Any] | None:
        return next((e for e in self.entries if e["name"] == name and e["method"] == method), None)


def scenarios(quick: bool, users: int, workers: int, scale: float, run_s: float | None) -> list[Scenario]:
    """Sized so the sync cut share is measured on several hundred requests (±5 points holds with
    margin), and polling offers about what the stack's workers serve: more users than that would
    measure the queue, not the API. `--quick` also runs a short retry storm: it is the only
    scenario that measures amplification."""
    base = run_s or (20 if quick else max(60, 600 * scale))
    drain = LONGEST_DOWNLOAD_S * scale
    polling_users = max(2, 2 * workers)
    return [
        Scenario("sync", "sync.py", users, base, drain + 5, "naive clients on the synchronous start"),
        Scenario("polling", "polling.py", polling_users, base * (0.75 if quick else 1), 4 * drain + 10,
                 "initiate, poll, download, verify"),
        Scenario("retry_storm", "retry_storm.py", users, base * (0.6 if quick else 1), 4 * drain + 10,
                 "clients retrying on errors, on both APIs"),
    ]  # fmt: skip


def expected_cut(settings: Settings, scale: float) -> dict[str, Any]:
    """Which layer cuts the legacy route first, at what (real) T, and the share it must cut.

    The same reading as `dlkit audit` (dlkit/timeouts.py), with the app's settings as this process
    sees them (the stack the demo starts inherits its environment), and the local chain's floor:
    no scaled proxy timeout goes below FLOOR_S (dlkit/chain.py).
    """
    chain = read_chain()
    low, high = settings.DOWNLOAD_DELAY_MIN_MS / 1000, settings.DOWNLOAD_DELAY_MAX_MS / 1000
    proxies = {
        "nginx": chain.nginx.location("= /v1/download/start").proxy_read_timeout.seconds,
        "lb": chain.lb_idle_timeout.seconds,
        "edge": chain.edge_read_timeout.seconds,
    }
    # Inner layers first: on a tie the innermost fires and the others relay its answer.
    layers = [("app", settings.REQUEST_TIMEOUT_MS / 1000)]
    layers += [(name, max(seconds * scale, FLOOR_S) / scale) for name, seconds in proxies.items()]
    layer, timeout_s = min(layers, key=lambda item: item[1])
    return {"layer": layer, "timeout_s": round(timeout_s, 3), "share": round(cut_share(timeout_s, low, high), 4)}


# --- running one scenario ----------------------------------------------------------------------


def _live_counts(stats_csv: Path) -> tuple[int, int]:
    """(requests, failures) so far, from the Aggregated row Locust rewrites every second."""
    try:
        with open(stats_csv, newline="") as f:
            for row in csv.DictReader(f):
                if row["Name"] == "Aggregated":
                    return int(row["Request Count"]), int(row["Failure Count"])
    except (OSError, KeyError, ValueError):
        pass  # not written yet, or caught mid-write
    return 0, 0


def run_scenario(scenario: Scenario, entry: str, report: Path, scale: float, api_key: str | None,
                 progress: Progress) -> tuple[list[dict[str, Any]], list[str]]:  # fmt: skip
    prefix = report / scenario.name
    command = [
        sys.executable, "-m", "locust", "-f", str(LOADTESTS / scenario.locustfile), "--host", entry,
        "--headless", "-u", str(scenario.users), "-r", str(scenario.users), "-t", f"{round(scenario.run_s)}s",
        "--stop-timeout", f"{math.ceil(scenario.stop_timeout_s)}s", "--csv", str(prefix), "--html", f"{prefix}.html",
        "--json-file", str(prefix), "--only-summary", "--exit-code-on-error", "0", "--time-scale", f"{scale:g}",
    ]  # fmt: skip
    env = {**os.environ, **({"DLKIT_API_KEY": api_key} if api_key else {})}
    task = progress.add_task(scenario.name, total=scenario.run_s, counts="")
    started = time.monotonic()
    with open(f"{prefix}.log", "wb") as log:
        locust = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=LOADTESTS)
        try:
            while locust.poll() is None:
                elapsed = time.monotonic() - started
                requests, failures = _live_counts(Path(f"{prefix}_stats.csv"))
                finishing = " (finishing downloads in hand)" if elapsed > scenario.run_s else ""
                progress.update(task, completed=min(elapsed, scenario.run_s),
                                counts=f"{requests} requests, {failures} failed{finishing}")
                time.sleep(0.5)
        finally:
            if locust.poll() is None:  # interrupted: stop the one process we started
                locust.terminate()
                locust.wait(30)
    requests, failures = _live_counts(Path(f"{prefix}_stats.csv"))
    progress.update(task, completed=scenario.run_s, counts=f"{requests} requests, {failures} failed")
    json_path = Path(f"{prefix}.json")
    if locust.returncode != 0 or not json_path.exists():
        raise RuntimeError(f"locust exited with {locust.returncode} in scenario {scenario.name}; see {prefix}.log")
    return json.loads(json_path.read_text()), command


def settle(redis: Redis, timeout_s: float) -> dict[str, Any]:
    """Wait until the work clients left behind has ended (the legacy route's background threads,
    jobs still running), then read the accounting. Bounded: a job that never ends is not awaited."""
    deadline = time.monotonic() + timeout_s
    while True:
        figures = accounting.read(redis)
        sync, jobs = figures["sync"], figures["jobs"]
        done = sync["finished"] >= sync["started"] and jobs["completed"] + jobs["cancelled_running"] >= jobs["created"]
        if done or time.monotonic() > deadline:
            return figures
        time.sleep(0.2)


# --- figures -----------------------------------------------------------------------------------


def percentile_s(response_times: dict[str, int], q: float) -> float | None:
    """Percentile of Locust's {rounded ms: count} histogram, in seconds."""
    points = sorted((float(ms), count) for ms, count in response_times.items())
    total = sum(count for _, count in points)
    if not total:
        return None
    seen = 0
    for ms, count in points:
        seen += count
        if seen >= q * total:
            return round(ms / 1000, 3)
    return round(points[-1][0] / 1000, 3)


def _outcome(name: str) -> str:
    """"start [504 app]" -> "504 app"."""
    return name[name.index("[") + 1:-1]


def sync_figures(run: Run, expected: dict[str, Any], scale: float) -> dict[str, Any]:
    rows = run.rows("POST", "start [")
    requests = sum(r["num_requests"] for r in rows)
    by_status: dict[str, int] = {}
    by_layer: dict[str, int] = {}
    cut = 0
    for r in rows:
        outcome = _outcome(r["name"])
        status, _, layer = outcome.partition(" ")
        if not status.isdigit():  # "client timeout", "connection error": no status at all
            status, layer = outcome, "client"
        by_status[status] = by_status.get(status, 0) + r["num_requests"]
        if status.startswith("5") or layer == "client":
            cut += r["num_requests"]
            by_layer[layer] = by_layer.get(layer, 0) + r["num_requests"]
    delivered = {str(k): v for k, v in (run.row("start [200]", "POST") or {}).get("response_times", {}).items()}
    wasted = run.backend["sync"]["wasted_seconds"]
    return {
        "requests": requests,
        "ok": by_status.get("200", 0),
        "by_status": dict(sorted(by_status.items())),
        "by_layer": dict(sorted(by_layer.items())),
        "timeout_share_measured": round(cut / requests, 4) if requests else None,
        "timeout_share_expected": expected["share"],
        "tightest_layer": expected["layer"],
        "tightest_timeout_s": expected["timeout_s"],
        "delivered_p50_s": percentile_s(delivered, 0.5),
        "delivered_p95_s": percentile_s(delivered, 0.95),
        "wasted_backend_seconds": wasted,
        "wasted_backend_seconds_at_real_speed": round(wasted / scale, 1),
        "backend": run.backend["sync"],
    }


def polling_figures(run: Run, scale: float) -> dict[str, Any]:
    ttf = run.row("time-to-file", "JOB") or {"num_requests": 0, "num_failures": 0, "response_times": {}}
    never = sum(r["num_requests"] for r in run.rows("JOB", "job ["))
    wasted = run.backend["jobs"]["wasted_seconds"]
    return {
        "downloads": ttf["num_requests"] + never,
        "completed": ttf["num_requests"],
        "verified": ttf["num_requests"] - ttf["num_failures"],
        "errors": sum(r["num_failures"] for r in run.entries),
        "requests": sum(r["num_requests"] for r in run.entries if r["method"] != "JOB"),
        "time_to_file_p50_s": percentile_s(ttf["response_times"], 0.5),
        "time_to_file_p95_s": percentile_s(ttf["response_times"], 0.95),
        "wasted_backend_seconds": wasted,
        "wasted_backend_seconds_at_real_speed": round(wasted / scale, 1),
        "backend": run.backend["jobs"],
    }


def retry_figures(run: Run) -> dict[str, Any]:
    def wanted(name: str) -> dict[str, Any]:
        return run.row(name, "WANT") or {"num_requests": 0, "num_failures": 0}

    sync, polling = wanted("sync download"), wanted("polling download")
    started = run.backend["sync"]["started"]
    created = run.backend["jobs"]["created"]
    return {
        "sync_amplification": round(started / sync["num_requests"], 2) if sync["num_requests"] else None,
        "polling_amplification": round(created / polling["num_requests"], 2) if polling["num_requests"] else None,
        "sync_wanted": sync["num_requests"],
        "sync_got": sync["num_requests"] - sync["num_failures"],
        "sync_handlers_started": started,
        "polling_wanted": polling["num_requests"],
        "polling_got": polling["num_requests"] - polling["num_failures"],
        "polling_jobs_created": created,
        "wasted_backend_seconds": round(run.backend["sync"]["wasted_seconds"] + run.backend["jobs"]["wasted_seconds"], 3),
    }


# --- output ------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _secs(value: float | None, scale: float) -> str:
    """A measured duration, and what it stands for at real speed."""
    if value is None:
        return "-"
    # Three significant digits, but never in scientific notation (2650 s, not 2.65e+03 s).
    shown = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return f"{shown} s (≈ {_human(value / scale)} real)"


def print_table(summary: dict[str, Any], console: Console) -> None:
    scale = summary["time_scale"]
    sync, polling = summary["scenarios"]["sync"], summary["scenarios"]["polling"]
    storm = summary["scenarios"].get("retry_storm")
    table = Table(title=f"before / after, TIME_SCALE {scale:g} (a 10-120 s download takes "
                        f"{10 * scale:g}-{120 * scale:g} s)")  # fmt: skip
    table.add_column("")
    table.add_column("sync start (the problem)", style="red")
    table.add_column("async jobs (the fix)", style="green")
    cut_by = sync["tightest_layer"]
    table.add_row("HTTP requests", f"{sync['requests']}", f"{polling['requests']}")
    table.add_row("downloads delivered", f"{sync['ok']} of {sync['requests']}",
                  f"{polling['verified']} of {polling['downloads']} (bytes verified)")
    table.add_row("success rate", _pct(sync["ok"] / sync["requests"] if sync["requests"] else None),
                  _pct(polling["verified"] / polling["downloads"] if polling["downloads"] else None))
    table.add_row("5xx by status", ", ".join(f"{k}: {v}" for k, v in sync["by_status"].items() if k != "200") or "none",
                  "none" if not polling["errors"] else f"{polling['errors']} errors")
    table.add_row("cut by layer", ", ".join(f"{k}: {v}" for k, v in sync["by_layer"].items()) or "none", "none")
    table.add_row("timeout share", f"{_pct(sync['timeout_share_measured'])} measured, "
                  f"{_pct(sync['timeout_share_expected'])} expected ({cut_by} at {sync['tightest_timeout_s']:g} s)",
                  "0 %: no layer waits for the work")  # fmt: skip
    table.add_row("time to file p50", _secs(sync["delivered_p50_s"], scale) + " *",
                  _secs(polling["time_to_file_p50_s"], scale))
    table.add_row("time to file p95", _secs(sync["delivered_p95_s"], scale) + " *",
                  _secs(polling["time_to_file_p95_s"], scale))
    table.add_row("wasted backend seconds", _secs(sync["wasted_backend_seconds"], scale),
                  _secs(polling["wasted_backend_seconds"], scale))
    if storm:
        table.add_row("work amplification (retry storm)",
                      f"{storm['sync_amplification']}x: {storm['sync_handlers_started']} handlers for "
                      f"{storm['sync_wanted']} downloads wanted, {storm['sync_got']} got",
                      f"{storm['polling_amplification']}x: {storm['polling_jobs_created']} jobs for "
                      f"{storm['polling_wanted']} wanted (Idempotency-Key)")  # fmt: skip
    console.print(table)
    console.print("* sync: only the downloads that arrived, i.e. the short ones; the others never do.", style="dim")


def write_charts(summary: dict[str, Any], runs: dict[str, Run], report: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    scale = summary["time_scale"]
    sync = summary["scenarios"]["sync"]
    polling = summary["scenarios"]["polling"]

    # 1. Outcome shares per scenario: what share of downloads arrived, and who cut the others.
    bars: list[tuple[str, dict[str, int]]] = []
    outcomes = {"delivered": sync["ok"]}
    for r in runs["sync"].rows("POST", "start ["):
        if _outcome(r["name"]) != "200":
            outcomes[_outcome(r["name"])] = r["num_requests"]
    bars.append((f"sync start\n({sync['requests']} requests)", outcomes))
    bars.append((f"async jobs\n({polling['downloads']} downloads)",
                 {"delivered": polling["verified"], "failed": polling["downloads"] - polling["verified"]}))
    storm = summary["scenarios"].get("retry_storm")
    if storm:
        bars.append((f"retry storm, sync\n({storm['sync_wanted']} wanted)",
                     {"delivered": storm["sync_got"], "gave up": storm["sync_wanted"] - storm["sync_got"]}))
        bars.append((f"retry storm, async\n({storm['polling_wanted']} wanted)",
                     {"delivered": storm["polling_got"], "failed": storm["polling_wanted"] - storm["polling_got"]}))
    colours = {"delivered": "#2e7d32", "504 app": "#c62828", "504 nginx": "#ef6c00", "502 nginx": "#ff8f00",
               "504 lb": "#6a1b9a", "524 edge": "#283593", "client timeout": "#546e7a"}
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.9 * len(bars)))
    labels = [label for label, _ in bars][::-1]
    seen_labels: set[str] = set()
    for y, (_, counts) in enumerate(bars[::-1]):
        total = sum(counts.values()) or 1
        left = 0.0
        for outcome, count in counts.items():
            if not count:
                continue
            share = count / total
            ax.barh(y, share, left=left, color=colours.get(outcome, "#9e9e9e"),
                    label=outcome if outcome not in seen_labels else None)
            seen_labels.add(outcome)
            if share > 0.06:
                ax.text(left + share / 2, y, f"{share:.0%}", ha="center", va="center", color="white", fontsize=9)
            left += share
    expected = 1 - sync["timeout_share_expected"]
    ax.axvline(expected, ymin=(len(bars) - 1) / len(bars), color="black", linestyle="--", linewidth=1)
    ax.text(expected, len(bars) - 0.5, f" expected: {sync['timeout_share_expected']:.1%} cut by "
            f"{sync['tightest_layer']} at {sync['tightest_timeout_s']:g} s", fontsize=8, va="bottom")
    ax.set_yticks(range(len(bars)), labels)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, len(bars))
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title("What happened to each download")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    outcomes_png = report / "outcomes.png"
    fig.savefig(outcomes_png, dpi=110)
    plt.close(fig)

    # 2. Time to file of the async jobs, against the timeout that cuts the sync route.
    ttf = runs["polling"].row("time-to-file", "JOB")
    points = sorted((float(ms) / 1000, n) for ms, n in (ttf or {}).get("response_times", {}).items())
    fig, ax = plt.subplots(figsize=(9, 4))
    if points:
        values = [s for s, _ in points]
        ax.hist(values, weights=[n for _, n in points], bins=min(30, max(5, len(values))), color="#2e7d32",
                label=f"async jobs: initiate -> verified zip ({ttf['num_requests']})")
    cut_s = sync["tightest_timeout_s"] * scale
    ax.axvline(cut_s, color="#c62828", linestyle="--",
               label=f"sync start is cut here ({sync['tightest_layer']}, {sync['tightest_timeout_s']:g} s real)")
    for q, style in (("p50", ":"), ("p95", "-.")):
        value = polling[f"time_to_file_{q}_s"]
        if value is not None:
            ax.axvline(value, color="black", linestyle=style, linewidth=1, label=f"{q} {value:g} s")
    ax.set_xlabel(f"seconds at TIME_SCALE {scale:g} (x{1 / scale:g} for real speed)")
    ax.set_ylabel("downloads")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # whole downloads
    ax.set_title("Time to file with the async API: long downloads arrive too")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ttf_png = report / "time_to_file.png"
    fig.savefig(ttf_png, dpi=110)
    plt.close(fig)
    return [outcomes_png, ttf_png]


# --- the whole demo ----------------------------------------------------------------------------


def run_demo(entry: str, redis_url: str, scale: float, workers: int, *, quick: bool, users: int,
             report: Path, api_key: str | None, console: Console, run_s: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the scenarios against the stack at `entry`, write the report folder, return the summary."""
    report.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env()
    expected = expected_cut(settings, scale)
    redis = Redis.from_url(redis_url)
    runs: dict[str, Run] = {}
    plan = scenarios(quick, users, workers, scale, run_s)
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[counts]}"), console=console) as progress:  # fmt: skip
        for scenario in plan:
            progress.console.print(f"[bold]{scenario.name}[/]: {scenario.title}, {scenario.users} users, "
                                   f"{scenario.run_s:g} s")  # fmt: skip
            accounting.reset(redis)
            started = time.monotonic()
            entries, command = run_scenario(scenario, entry, report, scale, api_key, progress)
            backend = settle(redis, LONGEST_DOWNLOAD_S * scale * 2 + 5)
            runs[scenario.name] = Run(scenario, entries, backend, time.monotonic() - started, command)

    summary: dict[str, Any] = {
        "time_scale": scale,
        "entry": entry,
        "scenarios": {
            "sync": sync_figures(runs["sync"], expected, scale),
            "polling": polling_figures(runs["polling"], scale),
        },
        "commands": {name: " ".join(run.command[2:]) for name, run in runs.items()},
    }
    if "retry_storm" in runs:
        summary["scenarios"]["retry_storm"] = retry_figures(runs["retry_storm"])
    print_table(summary, console)
    charts = write_charts(summary, runs, report)
    summary["charts"] = [str(path) for path in charts]
    (report / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"report: [bold]{report}[/] (summary.json, {', '.join(p.name for p in charts)}, "
                  "Locust CSV/HTML per scenario)")  # fmt: skip
    return summary
