"""The `dlkit` command: start, inspect and stop the embedded stack.

    dlkit up       start every server in the background, return once each one is ready
    dlkit status   live health of each component (--json for scripts)
    dlkit down     stop exactly what `up` started
    dlkit demo     start the stack if needed, reproduce the 504s under load and prove the fix
    dlkit audit    check the timeout budget of the proxy chain in the config files
    dlkit bench    measure the performance ratios (issue 12) on a stack of its own
    dlkit download start a job (or resume one), follow it with a progress bar, write its verified zip

Everything a stack writes lives in DLKIT_HOME (default ./.dlkit): state.json, logs/, data, configs.
Stacks with different homes and base ports run side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from dlkit.kit import ROOT
from dlkit.kit.bench import Budget
from dlkit.kit.probes import check, same_process
from dlkit.kit.stack import DEFAULT_BASE_PORT
from dlkit.kit.supervisor import MODULE, STATE_FILE, read_state, running_supervisor

UP_TIMEOUT_S = 180
DOWN_TIMEOUT_S = 30
EXIT_USAGE = 2  # bad input: an unreachable entry, an unwritable report folder
EXIT_NOT_RUNNING = 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a process killed by SIGINT (128 + 2)
DOWNLOAD_EXIT_CODES = (
    "exit status: 0 the zip is written and verified; 1 the job failed or was cancelled, or its zip could "
    "not be fetched or verified; 2 bad usage (no ids or both ids and --resume, ids or key refused, "
    "unknown job, unreachable entry); 130 interrupted (Ctrl-C): the job keeps running, or is "
    "cancelled with --cancel"
)

console = Console()


def _home() -> Path:
    return Path(os.environ.get("DLKIT_HOME", ".dlkit")).resolve()


def _tail(path: str | Path | None, lines: int = 20) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def _print_components(state: dict[str, Any], health: dict[str, bool] | None = None) -> None:
    table = Table("component", "url", "pid", *(["healthy"] if health is not None else []))
    for name, component in state["components"].items():
        row = [name, component["url"] or "-", str(component["pid"])]
        if health is not None:
            row.append("[green]yes[/]" if health[name] else "[red]no[/]")
        table.add_row(*row)
    console.print(table)
    console.print(f"entry: [bold]{state['entry']}[/]   time scale: {state['time_scale']}   home: {state['home']}")


def _wait_for_message(fd: int, timeout: float) -> dict[str, Any] | None:
    """Read the supervisor's one JSON message; None if it exited without one. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    data = b""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([pipe], [], [], remaining)[0]:
                raise TimeoutError
            chunk = pipe.read(4096)
            if not chunk:  # the supervisor closed its end: message complete, or it died
                return json.loads(data) if data else None
            data += chunk


def _signal_group(process: psutil.Process, sig: int) -> None:
    # Each server was started as the leader of its own process group (mirakuru does setsid), so
    # signalling the group also reaches its children: gunicorn and nginx workers, RQ work horses.
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


def _stop_leftovers(state: dict[str, Any]) -> list[str]:
    """Stop recorded servers that still run, matched by pid AND start time, never a reused pid."""
    alive = {}
    for name, component in state["components"].items():
        process = same_process(component["pid"], component["create_time"])
        if process is not None:
            alive[name] = process
    for process in alive.values():
        _signal_group(process, signal.SIGTERM)
    _, stubborn = psutil.wait_procs(alive.values(), timeout=10)
    for process in stubborn:
        _signal_group(process, signal.SIGKILL)
    psutil.wait_procs(stubborn, timeout=5)
    return list(alive)


def cmd_up(args: argparse.Namespace) -> int:
    home = _home()
    state = read_state(home)
    if state is not None:
        supervisor = running_supervisor(state)
        if supervisor is not None:
            console.print(f"dlkit stack already running (supervisor pid {supervisor.pid})")
            _print_components(state)
            return 0
        # The supervisor died without cleaning up (killed, machine rebooted): clear what it left.
        leftovers = _stop_leftovers(state)
        if leftovers:
            console.print(f"stopped servers left by a dead supervisor: {', '.join(leftovers)}")
        (home / STATE_FILE).unlink()

    (home / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    # Spans of the API and the workers (dlkit/telemetry.py), inherited by every component: as JSON
    # lines in logs/spans.jsonl unless TRACES_FILE says otherwise ("" for none), and to a collector.
    # Not for the demo's stack (it calls this too): its load tests would fill a span file with hundreds of megabytes.
    if getattr(args, "traces", False):
        env.setdefault("TRACES_FILE", str(home / "logs" / "spans.jsonl"))
    if getattr(args, "otlp", None):
        env |= {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": args.otlp}
    read_fd, write_fd = os.pipe()
    command = [
        sys.executable,
        "-m",
        MODULE,
        "--home",
        str(home),
        "--base-port",
        str(args.base_port),
        "--time-scale",
        str(args.time_scale),
        "--workers",
        str(args.workers),
        *(["--no-chain"] if args.no_chain else []),
        "--ready-fd",
        str(write_fd),
    ]
    supervisor_log = home / "logs" / "supervisor.log"
    started = time.monotonic()
    with open(supervisor_log, "ab") as log_file:
        # A new session: the stack must outlive this command and ignore the terminal's Ctrl-C.
        supervisor = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    os.close(write_fd)  # so the pipe reports EOF when the supervisor closes or dies

    try:
        message = _wait_for_message(read_fd, UP_TIMEOUT_S)
    except TimeoutError:
        message = {"ready": False, "error": f"the stack was not ready within {UP_TIMEOUT_S} s"}
        supervisor.terminate()  # it stops whatever it had started

    if message is not None and message.get("ready"):
        state = read_state(home)
        console.print(f"dlkit stack up in {time.monotonic() - started:.1f} s")
        _print_components(state)
        return 0

    # The supervisor stops what it started before exiting: wait, so nothing is left when we return.
    try:
        supervisor.wait(timeout=UP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        supervisor.kill()
        supervisor.wait()
    if message is None:
        message = {"error": f"the supervisor exited before the stack was ready (code {supervisor.returncode})"}
        message["log"] = str(supervisor_log)
    console.print(f"[red]dlkit up failed:[/] {message['error']}", highlight=False)
    if message.get("log"):
        console.print(f"--- last lines of {message['log']} ---", highlight=False)
        console.print(_tail(message["log"]), markup=False, highlight=False)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    home = _home()
    state = read_state(home)
    if state is None or running_supervisor(state) is None:
        print(f"no dlkit stack running in {home}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    health = {}
    for name, component in state["components"].items():
        # The recorded process must still be the one running, and its live check must pass.
        alive = same_process(component["pid"], component["create_time"]) is not None
        health[name] = alive and check(component["probe"], component["pid"], state["redis_url"])
    if args.json:
        components = {name: {"url": c["url"], "healthy": health[name]} for name, c in state["components"].items()}
        print(json.dumps({"entry": state["entry"], "components": components}))
    else:
        _print_components(state, health)
    return 0 if all(health.values()) else 1


def cmd_down(args: argparse.Namespace) -> int:
    home = _home()
    state = read_state(home)
    if state is None:
        print(f"no dlkit stack running in {home}")
        return 0
    supervisor = running_supervisor(state)
    if supervisor is not None:
        supervisor.terminate()
        try:
            supervisor.wait(timeout=DOWN_TIMEOUT_S)
            print(
                f"stopped the stack at {state['entry']} (supervisor pid {supervisor.pid}): "
                f"{', '.join(state['components'])}"
            )
        except psutil.TimeoutExpired:
            print(f"the supervisor did not stop within {DOWN_TIMEOUT_S} s; stopping its servers directly")
            supervisor.kill()
    # Normally nothing is left; after a dead or stuck supervisor, its servers may be.
    leftovers = _stop_leftovers(state)
    if leftovers:
        print(f"stopped leftover servers: {', '.join(leftovers)}")
    (home / STATE_FILE).unlink(missing_ok=True)
    return 0


def _writable_folder(path: Path) -> str | None:
    """None when `path` is (or can be made) a folder this process can write; else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".dlkit-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        return error.strerror or str(error)
    return None


def _dlkit_at(entry: str) -> str | None:
    """None when `entry` answers GET / as a dlkit API does; else what is wrong, in one line."""
    try:
        with httpx.Client(timeout=10) as client:
            response = client.get(entry.rstrip("/") + "/")
    except httpx.HTTPError as error:
        return f"{entry} is not reachable ({type(error).__name__}: {error})"
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.status_code != 200 or not isinstance(document, dict) or "dlkit" not in str(document.get("service")):
        return f"{entry} does not answer GET / like a dlkit API (status {response.status_code})"
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the stack if needed, run the Locust scenarios through the chain, print and write the report."""
    from dlkit.kit.demo import DEMO_ACTIVE_JOBS_CAP, DEMO_RATE_LIMIT, run_demo
    from dlkit.settings import Settings

    if args.entry and (problem := _dlkit_at(args.entry)) is not None:
        console.print(f"[red]demo:[/] {problem}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    # Resolved here, once: Locust runs in other working directories, and the user's is the one meant.
    report = (args.report or Path("reports") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    if args.json:
        args.json = args.json.resolve()
    # Checked before any load is sent: a run of minutes must not end on an unwritable folder.
    for folder in (report, *([args.json.parent] if args.json else [])):
        problem = _writable_folder(folder)
        if problem is not None:
            console.print(f"[red]demo:[/] cannot write to {folder}: {problem}", highlight=False, soft_wrap=True)
            return EXIT_USAGE
    keys = Settings.from_env().api_keys  # the same API_KEYS the stack was given, if any
    api_key = args.api_key or os.environ.get("DLKIT_API_KEY") or next(iter(keys), None)
    if args.entry:
        return _demo_against(args, report, api_key)

    scale = (
        args.time_scale
        if args.time_scale is not None
        else float(os.environ.get("TIME_SCALE", 0.02 if args.quick else 0.1))
    )
    args.time_scale = scale  # what cmd_up reads
    home = _home()
    state = read_state(home)
    started_here = state is None or running_supervisor(state) is None
    began = time.monotonic()
    if started_here:
        # Every Locust user is one client to the per-client limiter: load tests need a high limit.
        os.environ["RATE_LIMIT_MAX_REQUESTS"] = str(
            max(DEMO_RATE_LIMIT, int(os.environ.get("RATE_LIMIT_MAX_REQUESTS", 0)))
        )
        os.environ.setdefault("MAX_ACTIVE_JOBS_PER_OWNER", DEMO_ACTIVE_JOBS_CAP)  # one owner, many users
        console.print(
            f"starting a stack at time scale {scale:g} (a 10-120 s download takes "
            f"{10 * scale:g}-{120 * scale:g} s), {args.workers} workers, "
            f"RATE_LIMIT_MAX_REQUESTS={os.environ['RATE_LIMIT_MAX_REQUESTS']}"
        )
        if cmd_up(args) != 0:
            return 1
        state = read_state(home)
    elif state["time_scale"] != scale:
        console.print(
            f"using the running stack's time scale {state['time_scale']:g} (its clock decides); "
            "its rate limit must be high (RATE_LIMIT_MAX_REQUESTS), or the report shows 429s"
        )
    scale = state["time_scale"]
    workers = sum(name.startswith("worker-") for name in state["components"])
    try:
        summary = run_demo(
            state["entry"],
            state["redis_url"],
            scale,
            workers,
            quick=args.quick,
            users=args.users,
            report=report,
            api_key=api_key,
            console=console,
            run_s=args.run_time,
            layers=not args.no_layers,
        )
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        console.print(f"demo done in {time.monotonic() - began:.0f} s")
        return 0
    except Exception as error:  # a demo reports what broke instead of a traceback
        console.print(f"[red]demo failed:[/] {error}", highlight=False, soft_wrap=True)
        return 1
    finally:
        if started_here and not args.keep:
            cmd_down(args)


def _demo_against(args: argparse.Namespace, report: Path, api_key: str | None) -> int:
    """`dlkit demo --entry URL`: the same scenarios against a deployment that is already running."""
    from dlkit.kit.demo import run_demo

    # The deployment's clock decides; it cannot be read from outside, so it is given.
    scale = args.time_scale if args.time_scale is not None else float(os.environ.get("TIME_SCALE", 1.0))
    began = time.monotonic()
    console.print(
        f"demo against {args.entry} at time scale {scale:g} (the deployment's TIME_SCALE); "
        "its RATE_LIMIT_MAX_REQUESTS must be high, or the report shows 429s"
    )
    try:
        summary = run_demo(
            args.entry,
            args.redis_url or os.environ.get("REDIS_URL"),
            scale,
            args.workers,
            quick=args.quick,
            users=args.users,
            report=report,
            api_key=api_key,
            console=console,
            run_s=args.run_time,
            layers=False,
            embedded=False,
        )
    except Exception as error:
        console.print(f"[red]demo failed:[/] {error}", highlight=False, soft_wrap=True)
        return 1
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    console.print(f"demo done in {time.monotonic() - began:.0f} s")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Check the timeout budget of the config files; no server is started."""
    from dlkit.kit.audit import run

    return run(args.root, args.json, console)


def cmd_bench(args: argparse.Namespace) -> int:
    """Start a stack of its own, measure each ratio against its target, print (and write) them."""
    from dlkit.kit.bench import run

    if args.json:
        args.json = args.json.resolve()
        problem = _writable_folder(args.json.parent)
        if problem is not None:
            console.print(f"[red]bench:[/] cannot write to {args.json.parent}: {problem}", highlight=False)
            return EXIT_USAGE
    budget = Budget(
        time_scale=args.time_scale,
        workers=args.workers,
        wrk_duration_s=args.duration,
        rounds=args.rounds,
        pairs=args.pairs,
        polls=args.polls,
        p3_files=args.p3_files,
        p4_jobs=args.p4_jobs,
        p5_jobs_per_worker=args.p5_jobs,
        cost_jobs=args.jobs,
    )
    return run(budget, args.json, console, strict=args.strict, home=args.home)


def _download_entry(args: argparse.Namespace) -> str:
    """--entry, else the entry of the stack `dlkit up` runs here, else the default one."""
    if args.entry:
        return args.entry
    state = read_state(_home())
    if state is not None and running_supervisor(state) is not None:
        return state["entry"]
    return f"http://127.0.0.1:{DEFAULT_BASE_PORT}"


def _resume_command(args: argparse.Namespace, job_id: str) -> str:
    """The command that follows and downloads this job again, with the options that matter."""
    command = ["dlkit", "download", "--resume", job_id]
    command += ["--out", str(args.out)] if args.out else []
    command += ["--entry", args.entry] if args.entry else []
    return shlex.join(command)


def cmd_download(args: argparse.Namespace) -> int:
    """Start a job for the ids (or resume --resume JOB_ID), show its progress, write its verified zip."""
    from rich.filesize import decimal
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from dlkit.client import ApiError, ChecksumMismatch, DownloadClient, JobNotCompleted, Status
    from dlkit.settings import Settings

    if bool(args.ids) == bool(args.resume):
        args.parser.error("give file ids, or --resume JOB_ID, not both")
    entry = _download_entry(args)
    if (problem := _dlkit_at(entry)) is not None:  # at once, rather than after the client's retries
        console.print(f"[red]download:[/] {problem}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    api_key = args.api_key or os.environ.get("DLKIT_API_KEY") or next(iter(Settings.from_env().api_keys), None)
    job_id = None
    columns = (
        TextColumn("{task.description:>5}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with DownloadClient(entry, api_key, sse=not args.poll) as client, Progress(*columns, console=console) as progress:

        def show_files(status: Status) -> None:
            eta = status.estimated_seconds_remaining
            detail = f"{status.processed_files}/{status.total_files} files, {status.status}"
            if eta is not None and not status.is_terminal:
                detail += f", about {eta:.0f} s left" if eta >= 1 else f", about {eta:.1f} s left"
            progress.update(files, total=status.total_files, completed=status.processed_files, detail=detail)

        try:
            status = client.status(args.resume) if args.resume else client.start(args.ids)
            job_id = status.job_id
            progress.console.print(f"job {job_id} at {entry}", highlight=False, soft_wrap=True)
            files = progress.add_task("files", total=status.total_files, detail="")
            show_files(status)
            final = client.wait(status, on_progress=show_files)
            if final.status != "completed":
                progress.stop()
                console.print(
                    f"[red]job {job_id} {final.status}[/]" + (f": {final.error}" if final.error else ""),
                    highlight=False,
                )
                return 1
            out = args.out or Path(f"dlkit-{job_id}.zip")
            size = final.artifact_size or 0
            zip_task = progress.add_task("zip", total=size or None, detail=f"0/{decimal(size)}")
            client.download(
                final,
                out,
                on_bytes=lambda n, total: progress.update(
                    zip_task, completed=n, detail=f"{decimal(n)}/{decimal(size)}"
                ),
            )
            progress.stop()  # the bars' last state first, then the result under them
            console.print(
                f"wrote {out}: {size} bytes, sha256 {final.artifact_sha256} verified",
                highlight=False,
                soft_wrap=True,
            )
            return 0
        except KeyboardInterrupt:
            progress.stop()
            if job_id is None:
                console.print("interrupted before a job was started")
            elif args.cancel:
                try:
                    final = client.cancel(job_id)
                except ApiError as error:  # it finished meanwhile (409)
                    console.print(f"interrupted: job {job_id} not cancelled: {error}", highlight=False)
                else:
                    console.print(f"interrupted: job {job_id} {final.status}", highlight=False)
            else:
                console.print(
                    f"interrupted: job {job_id} keeps running; resume with\n  {_resume_command(args, job_id)}",
                    highlight=False,
                    soft_wrap=True,
                )
            return EXIT_INTERRUPTED
        except ApiError as error:
            console.print(f"[red]download:[/] {error}", highlight=False, soft_wrap=True)
            return EXIT_USAGE if 400 <= error.status_code < 500 else 1
        except httpx.TransportError as error:
            console.print(
                f"[red]download:[/] {entry} is not reachable ({type(error).__name__}: {error})",
                highlight=False,
                soft_wrap=True,
            )
            if job_id is None:
                return EXIT_USAGE
            console.print(f"job {job_id} may still run; resume with\n  {_resume_command(args, job_id)}", soft_wrap=True)
            return 1
        except (ChecksumMismatch, JobNotCompleted) as error:
            console.print(f"[red]download:[/] {error}", highlight=False, soft_wrap=True)
            return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlkit", description="Run the dlkit stack locally.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the embedded stack in the background")
    up.add_argument(
        "--time-scale",
        type=float,
        default=float(os.environ.get("TIME_SCALE", 1.0)),
        help="clock scale for every duration (default: TIME_SCALE or 1.0; 0.02 runs the story in seconds)",
    )
    up.add_argument("--workers", type=int, default=2, help="number of RQ workers (default: 2)")
    up.add_argument(
        "--base-port",
        type=int,
        default=int(os.environ.get("DLKIT_BASE_PORT", DEFAULT_BASE_PORT)),
        help="nginx listens here, the other servers on the next ports "
        f"(default: DLKIT_BASE_PORT or {DEFAULT_BASE_PORT})",
    )
    up.add_argument("--redis-url", help="use this Redis instead of starting Valkey (default: REDIS_URL if set)")
    up.add_argument(
        "--otlp",
        metavar="URL",
        help="also send the API's and workers' spans to this OTLP/HTTP endpoint, e.g. http://127.0.0.1:4318 "
        "(Jaeger, an OpenTelemetry collector); they always go to logs/spans.jsonl",
    )
    up.add_argument(
        "--no-chain",
        action="store_true",
        help="serve clients from nginx directly, without the emulated edge (Cloudflare) and LB (ALB)",
    )
    up.set_defaults(func=cmd_up, traces=True)

    status = commands.add_parser(
        "status", help="live health of each component; exit 1 if any is unhealthy, 3 if none runs"
    )
    status.add_argument("--json", action="store_true", help="print {entry, components: {name: {url, healthy}}}")
    status.set_defaults(func=cmd_status)

    down = commands.add_parser("down", help="stop what `dlkit up` started")
    down.set_defaults(func=cmd_down)

    demo = commands.add_parser(
        "demo",
        help="start the stack if needed, reproduce the 504s with Locust and prove the fix; "
        "exit 0 done, 1 failed, 2 bad input",
    )
    demo.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="clock scale if the stack must be started (default: TIME_SCALE, else 0.02 with --quick, "
        "0.1 without: a real minute takes 6 s); with --entry, the deployment's (default 1.0)",
    )
    demo.add_argument("--quick", action="store_true", help="short runs at time scale 0.02: under 4 minutes in all")
    demo.add_argument(
        "--users",
        type=int,
        default=20,
        help="Locust users of the sync and retry-storm scenarios (default 20; polling: 2 per worker)",
    )
    demo.add_argument(
        "--run-time",
        type=float,
        default=None,
        help="seconds per scenario (default: 20 with --quick, else 600 x time scale, at least 60)",
    )
    demo.add_argument("--json", type=Path, help="also write the summary (summary.json) to this path")
    demo.add_argument(
        "--report", type=Path, help="report folder (default: reports/<timestamp>/ under the current folder)"
    )
    demo.add_argument(
        "--entry",
        help="run against this running deployment (compose, staging) instead of starting "
        "a stack; the layers scenario is left out",
    )
    demo.add_argument(
        "--redis-url",
        help="with --entry: the deployment's Redis, for the server-side accounting "
        "(default: REDIS_URL); without it the report says what it lacks",
    )
    demo.add_argument(
        "--api-key", help="API key for a deployment with API_KEYS (default: DLKIT_API_KEY, else the first of API_KEYS)"
    )
    demo.add_argument("--no-layers", action="store_true", help="leave out the layers scenario")
    demo.add_argument("--workers", type=int, default=4, help=argparse.SUPPRESS)
    demo.add_argument(
        "--base-port",
        type=int,
        default=int(os.environ.get("DLKIT_BASE_PORT", DEFAULT_BASE_PORT)),
        help=argparse.SUPPRESS,
    )
    demo.add_argument("--no-chain", action="store_true", help=argparse.SUPPRESS)
    demo.add_argument("--keep", action="store_true", help="leave a stack this command started running")
    demo.set_defaults(func=cmd_demo)

    audit = commands.add_parser(
        "audit", help="check the timeout budget from Cloudflare to the app; exit 1 on any error or warning"
    )
    audit.add_argument("--root", type=Path, default=ROOT, help="checkout to read the configs of (default: this one)")
    audit.add_argument("--json", action="store_true", help='print {"ok", "findings": [{check, severity, ...}]}')
    audit.set_defaults(func=cmd_audit)

    defaults = Budget()
    bench = commands.add_parser(
        "bench",
        help="measure the performance ratios (issue 12) on a stack of its own, "
        "about 4 minutes; exit 0 once measured (--strict: 1 if any target fails)",
    )
    bench.add_argument("--json", type=Path, help="also write every figure as JSON to this path")
    bench.add_argument(
        "--time-scale",
        type=float,
        default=defaults.time_scale,
        help=f"clock scale of the stack (default {defaults.time_scale:g})",
    )
    bench.add_argument("--workers", type=int, default=defaults.workers, help=f"RQ workers (default {defaults.workers})")
    bench.add_argument(
        "--duration",
        type=float,
        default=defaults.wrk_duration_s,
        help=f"seconds per wrk run (default {defaults.wrk_duration_s:g})",
    )
    bench.add_argument(
        "--rounds",
        type=int,
        default=defaults.rounds,
        help=f"interleaved rounds of P3 and P4, median kept (default {defaults.rounds})",
    )
    bench.add_argument(
        "--pairs",
        type=int,
        default=defaults.pairs,
        help=f"adjacent wrk pairs per HTTP ratio, median and spread kept (default {defaults.pairs})",
    )
    bench.add_argument(
        "--polls",
        type=int,
        default=defaults.polls,
        help=f"polls counted for the Redis figures (default {defaults.polls})",
    )
    bench.add_argument(
        "--p3-files",
        type=int,
        default=defaults.p3_files,
        help=f"files in the P3 artifact (default {defaults.p3_files}, about 20 MiB)",
    )
    bench.add_argument(
        "--p4-jobs", type=int, default=defaults.p4_jobs, help=f"jobs per P4 round (default {defaults.p4_jobs})"
    )
    bench.add_argument(
        "--p5-jobs",
        type=int,
        default=defaults.p5_jobs_per_worker,
        help=f"P5 jobs per client, one client per worker (default {defaults.p5_jobs_per_worker})",
    )
    bench.add_argument(
        "--jobs",
        type=int,
        default=defaults.cost_jobs,
        help=f"jobs at once in the backlog and polling-vs-SSE measure (default {defaults.cost_jobs})",
    )
    bench.add_argument("--strict", action="store_true", help="exit 1 when any measured target fails")
    bench.add_argument(
        "--home",
        type=Path,
        help="keep the stack's files and logs in this folder (default: a temporary folder, removed at the end)",
    )
    bench.set_defaults(func=cmd_bench)

    download = commands.add_parser(
        "download",
        help="start a job for file ids (or resume one), follow it with a progress bar, write its verified zip",
        description="Start a download job (or resume one), follow its progress (server-sent events, else "
        "polling), then write its zip, verified against the job's sha256. Ctrl-C leaves the job running "
        "and prints how to resume it; with --cancel, Ctrl-C cancels it.",
        epilog=DOWNLOAD_EXIT_CODES,
    )
    download.add_argument("ids", nargs="*", type=int, metavar="IDS", help="file ids (integers, 10000-100000000)")
    download.add_argument("--out", type=Path, help="where to write the zip (default: dlkit-JOB_ID.zip here)")
    download.add_argument(
        "--entry", help="the API's URL (default: the stack `dlkit up` runs here, else http://127.0.0.1:18080)"
    )
    download.add_argument(
        "--api-key", help="API key for a deployment with API_KEYS (default: DLKIT_API_KEY, else the first of API_KEYS)"
    )
    download.add_argument("--resume", metavar="JOB_ID", help="follow and download this job instead of starting one")
    download.add_argument("--cancel", action="store_true", help="on Ctrl-C, cancel the job instead of leaving it")
    download.add_argument("--poll", action="store_true", help="poll the status instead of server-sent events")
    download.set_defaults(func=cmd_download, parser=download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
