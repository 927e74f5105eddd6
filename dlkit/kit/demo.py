"""`dlkit demo`: the problem and the fix side by side, with numbers.

Runs the Locust scenarios of loadtests/ headless through the emulated chain, one after the other:

    sync         naive clients on the legacy `start`: which layer cuts what share (vs (120 - T) / 110)
    polling      initiate + status (Retry-After) + redirect to S3 + byte check: time-to-file
    retry_storm  clients retrying on errors, on both APIs: backend work started per download wanted
    layers       each layer of the chain (app, nginx, lb, edge) made the tightest in turn, on a stack
                 of its own whose proxies the demo re-renders: the share each one cuts, the status
                 its client gets, and polling through the same chain with no error

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
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dlkit import accounting
from dlkit.kit import ROOT
from dlkit.kit.chain import FLOOR_S, config_with_timeouts
from dlkit.kit.stack import Stack, free_base_port
from dlkit.kit.timeouts import Chain, cut_share, legacy_route_cuts, read_chain
from dlkit.layers import LAYERS, TIMEOUT_STATUS
from dlkit.settings import LONGEST_DOWNLOAD_S, Settings

LOADTESTS = ROOT / "loadtests"
# RATE_LIMIT_MAX_REQUESTS for a stack the demo starts: each Locust user is one client to the
# per-client limiter, and a polling user at TIME_SCALE 0.02 polls ten times a second.
DEMO_RATE_LIMIT = 1_000_000
# ... and every Locust user is the same owner, so the per-owner cap on active jobs is lifted too (0).
DEMO_ACTIVE_JOBS_CAP = "0"
# A layer "out of the way" in the layers scenario waits this long (real seconds): longer than the
# longest download, so only the layer under test cuts. The naive client's own timeout goes above it.
LIFTED_S = 150
LAYER_CLIENT_TIMEOUT_S = LIFTED_S + 30
PROXY_LAYERS = ("nginx", "lb", "edge")


@dataclass
class Scenario:
    name: str
    locustfile: str
    users: int
    run_s: float
    stop_timeout_s: float  # users finish the download in hand, so no job is left for nobody
    title: str
    args: tuple[str, ...] = ()  # more Locust options


@dataclass
class Run:
    """What one scenario produced: Locust's stats entries and the backend's accounting."""

    scenario: Scenario
    entries: list[dict[str, Any]]
    backend: dict[str, Any] | None  # None without server-side accounting
    seconds: float
    command: list[str] = field(default_factory=list)

    def rows(self, method: str | None = None, prefix: str = "") -> list[dict[str, Any]]:
        return [e for e in self.entries if (method is None or e["method"] == method) and e["name"].startswith(prefix)]

    def row(self, name: str, method: str) -> dict[str, Any] | None:
        return next((e for e in self.entries if e["name"] == name and e["method"] == method), None)


def scenarios(quick: bool, users: int, workers: int, scale: float, run_s: float | None) -> list[Scenario]:
    """Sized so the sync cut share is measured on several hundred requests (±5 points holds with
    margin), and polling has one user per worker: each user waits for its file before asking for the
    next, so every job finds a free worker and time to file is work plus polling, not queue wait
    (the report splits it, and says so when the queue dominates). `--quick` also runs a short retry
    storm: it is the only scenario that measures amplification."""
    base = run_s or (20 if quick else max(60, 600 * scale))
    drain = LONGEST_DOWNLOAD_S * scale
    polling_users = max(2, workers)
    return [
        Scenario("sync", "sync.py", users, base, drain + 5, "naive clients on the synchronous start"),
        Scenario(
            "polling",
            "polling.py",
            polling_users,
            base * (0.75 if quick else 1),
            4 * drain + 10,
            "initiate, poll, download, verify",
        ),
        Scenario(
            "retry_storm",
            "retry_storm.py",
            users,
            base * (0.6 if quick else 1),
            4 * drain + 10,
            "clients retrying on errors, on both APIs",
        ),
    ]


def expected_cut(
    chain: Chain, app_timeout_s: float, delays_s: tuple[float, float], scale: float, floor_s: float = FLOOR_S
) -> dict[str, Any]:
    """Which layer cuts the legacy route first, at what (real) T, and the share it must cut.

    The audit's reading (dlkit.kit.timeouts.legacy_route_cuts) of the config files, with the app's
    timeout as the API really runs it (its environment) and, on the embedded stack, the local
    chain's floor: no scaled proxy timeout goes below FLOOR_S (dlkit/kit/chain.py).
    """

    def effective_s(cut) -> float:
        if cut.layer in ("app", "gunicorn"):
            return cut.setting.seconds
        return max(cut.setting.seconds * scale, floor_s) / scale

    first = min(legacy_route_cuts(chain, app_timeout_s), key=effective_s)  # min keeps the innermost of equals
    timeout_s = effective_s(first)
    return {
        "layer": first.layer,
        "timeout_s": round(timeout_s, 3),
        "share": round(cut_share(timeout_s, *delays_s), 4),
        "delays_s": delays_s,
    }


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


def run_scenario(
    scenario: Scenario, entry: str, report: Path, scale: float, api_key: str | None, progress: Progress
) -> tuple[list[dict[str, Any]], list[str]]:
    prefix = report / scenario.name
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        ",".join(str(LOADTESTS / f) for f in scenario.locustfile.split(",")),
        "--host",
        entry,
        "--headless",
        "-u",
        str(scenario.users),
        "-r",
        str(scenario.users),
        "-t",
        f"{round(scenario.run_s)}s",
        "--stop-timeout",
        f"{math.ceil(scenario.stop_timeout_s)}s",
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--json-file",
        str(prefix),
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--time-scale",
        f"{scale:g}",
        *scenario.args,
    ]
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
                progress.update(
                    task,
                    completed=min(elapsed, scenario.run_s),
                    counts=f"{requests} requests, {failures} failed{finishing}",
                )
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


def settle(redis: Redis | None, timeout_s: float) -> dict[str, Any] | None:
    """Wait until the work clients left behind has ended (the legacy route's background threads,
    jobs still running), then read the accounting. Bounded: a job that never ends is not awaited.
    None without server-side accounting (no Redis reachable)."""
    if redis is None:
        return None
    deadline = time.monotonic() + timeout_s
    while True:
        figures = accounting.read(redis)
        sync, jobs = figures["sync"], figures["jobs"]
        done = sync["finished"] >= sync["started"] and jobs["completed"] + jobs["cancelled_running"] >= jobs["created"]
        if done or time.monotonic() > deadline:
            return figures
        time.sleep(0.2)


def accounting_redis(redis_url: str | None) -> tuple[Redis | None, str]:
    """The deployment's Redis for server-side accounting, or None and why not."""
    if not redis_url:
        return None, "no Redis URL given (--redis-url or REDIS_URL)"
    redis = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        redis.ping()
    except (RedisError, ValueError) as error:
        return None, f"Redis at {redis_url} not reachable ({error})"
    return redis, f"Redis at {redis_url}"


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


def mean_s(response_times: dict[str, int]) -> float | None:
    """Mean of Locust's {rounded ms: count} histogram, in seconds."""
    total = sum(response_times.values())
    return round(sum(float(ms) * n for ms, n in response_times.items()) / total / 1000, 3) if total else None


def time_to_file_split(client_mean_s: float | None, backend: dict[str, Any] | None) -> dict[str, Any] | None:
    """The clients' mean time to file as queue wait + work + overhead, in seconds at the run's scale.

    Queue wait and initiate-to-ready are the workers' own clocks (dlkit/accounting.py); work is the
    rest of initiate-to-ready (the simulated work, zipping and the upload); overhead is what the client
    adds: the wait until its next poll sees the job done, then fetching and checking the artifact.
    """
    jobs = backend["jobs"] if backend else None
    if client_mean_s is None or not jobs or not jobs["completed"]:
        return None
    queue_wait = jobs["queue_wait_seconds"] / jobs["completed"]
    ready = jobs["ready_seconds"] / jobs["completed"]
    return {
        "queue_wait_s": round(queue_wait, 3),
        "work_s": round(ready - queue_wait, 3),
        "overhead_s": round(max(0.0, client_mean_s - ready), 3),
        "queue_bound": queue_wait > 0.25 * ready,  # a quarter of the server's time spent waiting for a worker
    }


def _outcome(name: str) -> str:
    """ "start [504 app]" -> "504 app"."""
    return name[name.index("[") + 1 : -1]


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
    wasted = run.backend["sync"]["wasted_seconds"] if run.backend else None
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
        "wasted_backend_seconds_at_real_speed": None if wasted is None else round(wasted / scale, 1),
        "backend": run.backend["sync"] if run.backend else None,
    }


def polling_figures(run: Run, scale: float) -> dict[str, Any]:
    ttf = run.row("time-to-file", "JOB") or {"num_requests": 0, "num_failures": 0, "response_times": {}}
    never = sum(r["num_requests"] for r in run.rows("JOB", "job ["))
    wasted = run.backend["jobs"]["wasted_seconds"] if run.backend else None
    return {
        "downloads": ttf["num_requests"] + never,
        "completed": ttf["num_requests"],
        "verified": ttf["num_requests"] - ttf["num_failures"],
        "errors": sum(r["num_failures"] for r in run.entries),
        "requests": sum(r["num_requests"] for r in run.entries if r["method"] != "JOB"),
        "time_to_file_p50_s": percentile_s(ttf["response_times"], 0.5),
        "time_to_file_p95_s": percentile_s(ttf["response_times"], 0.95),
        "time_to_file_mean_s": mean_s(ttf["response_times"]),
        "time_to_file_split": time_to_file_split(mean_s(ttf["response_times"]), run.backend),
        "wasted_backend_seconds": wasted,
        "wasted_backend_seconds_at_real_speed": None if wasted is None else round(wasted / scale, 1),
        "backend": run.backend["jobs"] if run.backend else None,
    }


def retry_figures(run: Run) -> dict[str, Any]:
    def wanted(name: str) -> dict[str, Any]:
        return run.row(name, "WANT") or {"num_requests": 0, "num_failures": 0}

    def ratio(work: int | None, wanted: int) -> float | None:
        return round(work / wanted, 2) if work is not None and wanted else None

    sync, polling = wanted("sync download"), wanted("polling download")
    backend = run.backend
    started = backend["sync"]["started"] if backend else None
    created = backend["jobs"]["created"] if backend else None
    return {
        "sync_amplification": ratio(started, sync["num_requests"]),
        "polling_amplification": ratio(created, polling["num_requests"]),
        "sync_wanted": sync["num_requests"],
        "sync_got": sync["num_requests"] - sync["num_failures"],
        "sync_handlers_started": started,
        "polling_wanted": polling["num_requests"],
        "polling_got": polling["num_requests"] - polling["num_failures"],
        "polling_jobs_created": created,
        "wasted_backend_seconds": round(backend["sync"]["wasted_seconds"] + backend["jobs"]["wasted_seconds"], 3)
        if backend
        else None,
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
    storm = summary["scenarios"]["retry_storm"]
    table = Table(
        title=f"before / after, TIME_SCALE {scale:g} (a 10-120 s download takes {10 * scale:g}-{120 * scale:g} s)"
    )
    table.add_column("")
    table.add_column("sync start (the problem)", style="red")
    table.add_column("async jobs (the fix)", style="green")
    cut_by = sync["tightest_layer"]
    table.add_row("HTTP requests", f"{sync['requests']}", f"{polling['requests']}")
    table.add_row(
        "downloads delivered",
        f"{sync['ok']} of {sync['requests']}",
        f"{polling['verified']} of {polling['downloads']} (bytes verified)",
    )
    table.add_row(
        "success rate",
        _pct(sync["ok"] / sync["requests"] if sync["requests"] else None),
        _pct(polling["verified"] / polling["downloads"] if polling["downloads"] else None),
    )
    table.add_row(
        "5xx by status",
        ", ".join(f"{k}: {v}" for k, v in sync["by_status"].items() if k != "200") or "none",
        "none" if not polling["errors"] else f"{polling['errors']} errors",
    )
    table.add_row("cut by layer", ", ".join(f"{k}: {v}" for k, v in sync["by_layer"].items()) or "none", "none")
    table.add_row(
        "timeout share",
        f"{_pct(sync['timeout_share_measured'])} measured, "
        f"{_pct(sync['timeout_share_expected'])} expected ({cut_by} at {sync['tightest_timeout_s']:g} s)",
        "0 %: no layer waits for the work",
    )
    table.add_row(
        "time to file p50", _secs(sync["delivered_p50_s"], scale) + " *", _secs(polling["time_to_file_p50_s"], scale)
    )
    table.add_row(
        "time to file p95", _secs(sync["delivered_p95_s"], scale) + " *", _secs(polling["time_to_file_p95_s"], scale)
    )
    split = polling["time_to_file_split"]
    if split is not None:
        table.add_row(
            "time to file, mean",
            "",
            # As measured: fixed costs (a fork, a round trip) do not scale with the time scale.
            f"{polling['time_to_file_mean_s']:.2f} s = {split['queue_wait_s']:.2f} s queue"
            f" + {split['work_s']:.2f} s work + {split['overhead_s']:.2f} s poll and fetch",
        )
    table.add_row(
        "wasted backend seconds",
        _secs(sync["wasted_backend_seconds"], scale),
        _secs(polling["wasted_backend_seconds"], scale),
    )
    if storm["sync_amplification"] is None:
        table.add_row("work amplification (retry storm)", "n/a: no server-side accounting", "n/a")
    else:
        table.add_row(
            "work amplification (retry storm)",
            f"{storm['sync_amplification']}x: {storm['sync_handlers_started']} handlers for "
            f"{storm['sync_wanted']} downloads wanted, {storm['sync_got']} got",
            f"{storm['polling_amplification']}x: {storm['polling_jobs_created']} jobs for "
            f"{storm['polling_wanted']} wanted (Idempotency-Key)",
        )
    console.print(table)
    console.print("* sync: only the downloads that arrived, i.e. the short ones; the others never do.", style="dim")
    if split is not None and split["queue_bound"]:
        console.print(
            "polling time to file is mostly queue wait: more users than workers; add workers to serve them",
            style="yellow",
        )
    if summary.get("accounting") is not True:
        console.print(
            f"no server-side accounting: {summary.get('accounting')}; wasted seconds and "
            "amplification need the deployment's Redis (--redis-url)",
            style="yellow",
        )


def print_layers(layers: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="each layer the tightest in turn: the sync route cut, polling untouched")
    for column in (
        "layer",
        "timeout",
        "client gets",
        "requests",
        "cut: measured",
        "cut: (120 - T) / 110",
        "chain overhead",
        "polling downloads",
        "polling errors",
    ):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for layer in layers:
        status = layer["client_status"]
        table.add_row(
            layer["layer"],
            f"{layer['timeout_s']:g} s",
            "-" if status is None else str(status),
            str(layer["requests"]),
            _pct(layer["timeout_share_measured"]),
            _expected_band(layer),
            "-" if layer.get("chain_overhead_ms") is None else f"{layer['chain_overhead_ms']:g} ms",
            str(layer["polling_downloads"]),
            str(layer["polling_errors"]),
        )
    console.print(table)


def _expected_band(layer: dict[str, Any]) -> str:
    """The theory, and the most the chain's overhead can add to it (expected_band)."""
    theory, high = layer["timeout_share_expected"], layer.get("timeout_share_expected_with_overhead")
    return _pct(theory) if high is None or high <= theory else f"{_pct(theory)} to {_pct(high)}"


def _save(fig, path: Path) -> Path:
    """Write one chart as a PNG and free its figure (matplotlib keeps every open one)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    bars.append(
        (
            f"async jobs\n({polling['downloads']} downloads)",
            {"delivered": polling["verified"], "failed": polling["downloads"] - polling["verified"]},
        )
    )
    storm = summary["scenarios"]["retry_storm"]
    bars.append(
        (
            f"retry storm, sync\n({storm['sync_wanted']} wanted)",
            {"delivered": storm["sync_got"], "gave up": storm["sync_wanted"] - storm["sync_got"]},
        )
    )
    bars.append(
        (
            f"retry storm, async\n({storm['polling_wanted']} wanted)",
            {"delivered": storm["polling_got"], "failed": storm["polling_wanted"] - storm["polling_got"]},
        )
    )
    colours = {
        "delivered": "#2e7d32",
        "504 app": "#c62828",
        "504 nginx": "#ef6c00",
        "502 nginx": "#ff8f00",
        "504 lb": "#6a1b9a",
        "524 edge": "#283593",
        "client timeout": "#546e7a",
    }
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
            ax.barh(
                y,
                share,
                left=left,
                color=colours.get(outcome, "#9e9e9e"),
                label=outcome if outcome not in seen_labels else None,
            )
            seen_labels.add(outcome)
            if share > 0.06:
                ax.text(left + share / 2, y, f"{share:.0%}", ha="center", va="center", color="white", fontsize=9)
            left += share
    expected = 1 - sync["timeout_share_expected"]
    ax.axvline(expected, ymin=(len(bars) - 1) / len(bars), color="black", linestyle="--", linewidth=1)
    ax.text(
        expected,
        len(bars) - 0.5,
        f" expected: {sync['timeout_share_expected']:.1%} cut by "
        f"{sync['tightest_layer']} at {sync['tightest_timeout_s']:g} s",
        fontsize=8,
        va="bottom",
    )
    ax.set_yticks(range(len(bars)), labels)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, len(bars))
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title("What happened to each download")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=8, frameon=False)
    outcomes_png = _save(fig, report / "outcomes.png")

    # 2. Time to file of the async jobs, against the timeout that cuts the sync route.
    ttf = runs["polling"].row("time-to-file", "JOB")
    points = sorted((float(ms) / 1000, n) for ms, n in (ttf or {}).get("response_times", {}).items())
    fig, ax = plt.subplots(figsize=(9, 4))
    if points:
        values = [s for s, _ in points]
        ax.hist(
            values,
            weights=[n for _, n in points],
            bins=min(30, max(5, len(values))),
            color="#2e7d32",
            label=f"async jobs: initiate -> verified zip ({ttf['num_requests']})",
        )
    cut_s = sync["tightest_timeout_s"] * scale
    ax.axvline(
        cut_s,
        color="#c62828",
        linestyle="--",
        label=f"sync start is cut here ({sync['tightest_layer']}, {sync['tightest_timeout_s']:g} s real)",
    )
    for q, style in (("p50", ":"), ("p95", "-.")):
        value = polling[f"time_to_file_{q}_s"]
        if value is not None:
            ax.axvline(value, color="black", linestyle=style, linewidth=1, label=f"{q} {value:g} s")
    ax.set_xlabel(f"seconds at TIME_SCALE {scale:g} (x{1 / scale:g} for real speed)")
    ax.set_ylabel("downloads")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # whole downloads
    ax.set_title("Time to file with the async API: long downloads arrive too")
    ax.legend(fontsize=8)
    return [outcomes_png, _save(fig, report / "time_to_file.png")]


# --- the layers scenario ------------------------------------------------------------------------


def chain_overhead_ms(run: Run) -> float | None:
    """The mean time the chain added to each download that arrived (sync.py's `CHAIN overhead`: the
    client's time minus the app's `processingTimeMs`), in ms; None if no download arrived."""
    row = run.row("overhead", "CHAIN")
    return row["total_response_time"] / row["num_requests"] if row and row["num_requests"] else None


def expected_band(layer: str, expected: dict[str, Any], overhead_ms: float | None, scale: float) -> tuple[float, float]:
    """The share `layer` should cut: from (120 - T) / 110 up to the same with T lowered by the chain's
    overhead, read at real speed.

    A proxy's timer runs while the app works and while the request and its answer cross the layers
    below it, a fixed cost that does not shrink with the time scale: 20 ms at 0.02 is 1 s of
    'download' (about 1 point of the share), nothing at real speed. The overhead is measured from the
    client, so it also holds the hops above the layer and the client's own scheduling: an upper
    bound. The app's timer starts inside the handler, so the app's row has no overhead to add.
    """
    theory = expected["share"]
    if layer == "app" or not overhead_ms:
        return theory, theory
    lowered = cut_share(expected["timeout_s"] - overhead_ms / 1000 / scale, *expected["delays_s"])
    return theory, round(max(theory, lowered), 4)


def layer_figures(layer: str, run: Run, expected: dict[str, Any], scale: float) -> dict[str, Any]:
    """One row of `scenarios.layers`: what the sync users measured with `layer` the tightest, and
    whether the polling users beside them got every file."""
    sync = run.rows("POST", "start [")
    requests = sum(r["num_requests"] for r in sync)
    by_outcome = {_outcome(r["name"]): r["num_requests"] for r in sync}
    cut = {outcome: n for outcome, n in by_outcome.items() if outcome != "200"}
    # The status the client got from the cutting layer: the most frequent failed outcome.
    top = max(cut, key=cut.get) if cut else None
    client_status = int(top.split()[0]) if top and top.split()[0].isdigit() else None
    polling = [e for e in run.entries if not e["name"].startswith("start [") and e["method"] != "CHAIN"]
    ttf = run.row("time-to-file", "JOB") or {"num_requests": 0, "num_failures": 0}
    never = sum(r["num_requests"] for r in run.rows("JOB", "job ["))
    overhead_ms = chain_overhead_ms(run)
    low, high = expected_band(layer, expected, overhead_ms, scale)
    measured = round(sum(cut.values()) / requests, 4) if requests else None
    return {
        "layer": layer,
        "timeout_s": expected["timeout_s"],
        "tightest_by_config": expected["layer"],
        "client_status": client_status,
        "client_status_expected": TIMEOUT_STATUS[layer],
        "requests": requests,
        "by_outcome": dict(sorted(by_outcome.items())),
        "timeout_share_measured": measured,
        "timeout_share_expected": expected["share"],
        "chain_overhead_ms": None if overhead_ms is None else round(overhead_ms, 1),
        "timeout_share_expected_with_overhead": high,
        # How far the measurement falls outside [theory, theory with the overhead], in points.
        "deviation_points": None if measured is None else round(100 * max(low - measured, measured - high, 0), 1),
        "polling_downloads": ttf["num_requests"] + never,
        "polling_verified": ttf["num_requests"] - ttf["num_failures"],
        "polling_requests": sum(e["num_requests"] for e in polling if e["method"] != "JOB"),
        "polling_errors": sum(e["num_failures"] for e in polling),
        "command": " ".join(run.command[2:]),
    }


def layer_plan(quick: bool, scale: float, workers: int, run_s: float | None) -> Scenario:
    """Sync users enough to measure each share on about 1000 requests in a full demo (within 2
    points of theory) and several hundred with --quick, and polling users beside them."""
    # Sized for a 2-core machine: more users measure the machine's CPU, not the chain (every sync user
    # holds threads, every polling user polls ten times a second at time scale 0.02).
    users = 64
    seconds = run_s or (30 if quick else max(60, 900 * scale))
    polling = max(2, workers)
    config = [
        {"user_class_name": "SyncUser", "fixed_count": users},
        {"user_class_name": "PollingUser", "fixed_count": polling},
    ]
    return Scenario(
        "layer",
        "sync.py,polling.py",
        users + polling,
        seconds,
        4 * LONGEST_DOWNLOAD_S * scale + 10,
        f"{users} sync and {polling} polling",
        ("--config-users", json.dumps(config), "--client-timeout", str(LAYER_CLIENT_TIMEOUT_S)),
    )


def run_layers(
    scale: float,
    workers: int,
    *,
    quick: bool,
    report: Path,
    api_key: str | None,
    progress: Progress,
    run_s: float | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Run]]:
    """Make app, nginx, lb and edge the tightest layer in turn and run sync + polling users.

    On a stack of its own (the one `dlkit up` started runs in another process, which cannot be
    re-rendered from here), at the demo's time scale, with copies of the chain's files in which the
    other proxies wait LIFTED_S (dlkit.kit.chain.config_with_timeouts); the app's REQUEST_TIMEOUT_MS is
    lifted too, except when the app is the layer under test. The expected T and share come from
    those same copies, read by the audit's reader.
    """
    settings = Settings.from_env()
    delays = (settings.DOWNLOAD_DELAY_MIN_MS / 1000, settings.DOWNLOAD_DELAY_MAX_MS / 1000)
    plan = layer_plan(quick, scale, workers, run_s)
    home = Path(tempfile.mkdtemp(prefix="dlkit-layers-"))
    env = {
        "RATE_LIMIT_MAX_REQUESTS": str(DEMO_RATE_LIMIT),
        "MAX_ACTIVE_JOBS_PER_OWNER": DEMO_ACTIVE_JOBS_CAP,
        # Each sync user holds a gunicorn thread for its whole download, even once a proxy cut it,
        # and the two gunicorn workers do not share the load evenly: room for every user in each,
        # or requests wait for a thread, and that wait counts against the layer's timeout.
        "GUNICORN_THREADS": str(max(16, 2 * plan.users)),
    }
    rows: list[dict[str, Any]] = []
    runs: dict[str, Run] = {}
    stack = None
    try:
        for layer in LAYERS:
            config = config_with_timeouts(home / f"config-{layer}", {p: LIFTED_S for p in PROXY_LAYERS if p != layer})
            app_timeout_ms = settings.REQUEST_TIMEOUT_MS if layer == "app" else LIFTED_S * 1000
            app_env = {"REQUEST_TIMEOUT_MS": str(app_timeout_ms)}
            if stack is None:
                progress.console.print(f"[bold]layers[/]: starting a stack of its own at time scale {scale:g}")
                stack = Stack(
                    home / "stack",
                    free_base_port(),
                    time_scale=scale,
                    workers=workers,
                    env=env | app_env,
                    config_root=config,
                    prometheus=False,
                )
                stack.start()
            else:
                # The API restarts only when its timeout changes (from the app's row to the proxies').
                changed = stack.client_env()["REQUEST_TIMEOUT_MS"] != app_env["REQUEST_TIMEOUT_MS"]
                stack.reconfigure(config, env=app_env if changed else None)
            expected = expected_cut(read_chain(config), app_timeout_ms / 1000, delays, scale)
            if expected["layer"] != layer:
                raise RuntimeError(f"layers: {expected['layer']} is tighter than {layer} in {config}")
            scenario = Scenario(
                f"layer-{layer}", plan.locustfile, plan.users, plan.run_s, plan.stop_timeout_s, plan.title, plan.args
            )
            progress.console.print(
                f"[bold]layer {layer}[/]: the tightest at {expected['timeout_s']:g} s; "
                f"{plan.title}, {plan.users} users, {plan.run_s:g} s"
            )
            started = time.monotonic()
            entries, command = run_scenario(scenario, stack.entry, report, scale, api_key, progress)
            run = Run(scenario, entries, None, time.monotonic() - started, command)
            runs[scenario.name] = run
            rows.append(layer_figures(layer, run, expected, scale))
    finally:
        if stack is not None:
            stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    return rows, runs


def write_layers_chart(layers: list[dict[str, Any]], report: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    positions = range(len(layers))
    measured = [row["timeout_share_measured"] or 0 for row in layers]
    expected = [row["timeout_share_expected"] for row in layers]
    ax.bar([x - 0.2 for x in positions], measured, width=0.4, color="#c62828", label="measured")
    # The error bar reaches the share with the chain's overhead counted (expected_band).
    above = [
        max(0.0, (row.get("timeout_share_expected_with_overhead") or 0) - row["timeout_share_expected"])
        for row in layers
    ]
    ax.bar(
        [x + 0.2 for x in positions],
        expected,
        width=0.4,
        color="#9e9e9e",
        yerr=[[0.0] * len(layers), above],
        capsize=3,
        label="(120 - T) / 110, up to the chain's overhead",
    )
    for x, row in zip(positions, layers, strict=True):
        status = row["client_status"]
        ax.text(
            x - 0.2,
            (row["timeout_share_measured"] or 0) + 0.02,
            f"{'-' if status is None else status}\n{row['requests']} req",
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(list(positions), [f"{row['layer']}\nT = {row['timeout_s']:g} s" for row in layers])
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_ylabel("synchronous downloads cut")
    ax.set_title("Each layer the tightest in turn: the share it cuts, and the status its client gets")
    ax.legend(fontsize=8)
    return _save(fig, report / "layers.png")


# --- the whole demo ----------------------------------------------------------------------------


def run_demo(
    entry: str,
    redis_url: str | None,
    scale: float,
    workers: int,
    *,
    quick: bool,
    users: int,
    report: Path,
    api_key: str | None,
    console: Console,
    run_s: float | None = None,
    layers: bool = True,
    embedded: bool = True,
) -> dict[str, Any]:
    """Run the scenarios against the stack at `entry`, write the report folder, return the summary.

    `embedded`: the entry is the local chain (its floor on scaled timeouts applies). `layers`: also
    run the layers scenario, on a stack of its own. `redis_url`: the deployment's Redis, for the
    server-side accounting; without it the report says what it lacks.
    """
    report.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env()
    delays = (settings.DOWNLOAD_DELAY_MIN_MS / 1000, settings.DOWNLOAD_DELAY_MAX_MS / 1000)
    expected = expected_cut(
        read_chain(), settings.REQUEST_TIMEOUT_MS / 1000, delays, scale, FLOOR_S if embedded else 0.0
    )
    redis, accounting_source = accounting_redis(redis_url)
    runs: dict[str, Run] = {}
    layer_rows: list[dict[str, Any]] = []
    plan = scenarios(quick, users, workers, scale, run_s)
    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[counts]}"),
        console=console,
    ) as progress:
        for scenario in plan:
            progress.console.print(
                f"[bold]{scenario.name}[/]: {scenario.title}, {scenario.users} users, {scenario.run_s:g} s"
            )
            if redis is not None:
                accounting.reset(redis)
            started = time.monotonic()
            entries, command = run_scenario(scenario, entry, report, scale, api_key, progress)
            backend = settle(redis, LONGEST_DOWNLOAD_S * scale * 2 + 5)
            runs[scenario.name] = Run(scenario, entries, backend, time.monotonic() - started, command)
        if layers:
            layer_rows, layer_runs = run_layers(
                scale, workers, quick=quick, report=report, api_key=api_key, progress=progress, run_s=run_s
            )
            runs |= layer_runs

    summary: dict[str, Any] = {
        "time_scale": scale,
        "entry": entry,
        "accounting": True if redis is not None else accounting_source,
        "scenarios": {
            "sync": sync_figures(runs["sync"], expected, scale),
            "polling": polling_figures(runs["polling"], scale),
            "retry_storm": retry_figures(runs["retry_storm"]),
            "layers": layer_rows,
        },
        "commands": {name: " ".join(run.command[2:]) for name, run in runs.items()},
    }
    if not layers:
        summary["layers_skipped"] = (
            "the layers scenario re-renders the embedded stack's proxies: not run against --entry"
        )
    print_table(summary, console)
    charts = write_charts(summary, runs, report)
    if layer_rows:
        print_layers(layer_rows, console)
        charts.append(write_layers_chart(layer_rows, report))
    summary["charts"] = [str(path) for path in charts]
    (report / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(
        f"report: [bold]{report}[/] (summary.json, {', '.join(p.name for p in charts)}, Locust CSV/HTML per scenario)"
    )
    return summary
