"""The background process that holds a running stack for `dlkit up`.

The servers are killed when the process that started them exits (dlkit/kit/component.py), so the stack needs
a process that outlives the `dlkit up` command: this one. It starts the stack, records it in
HOME/state.json, tells its parent through a pipe whether the stack is ready, then supervises it:
a server that dies is started again (with backoff, dlkit/kit/component.py) and state.json updated.
On SIGTERM or SIGINT it stops exactly what it started.

Run by `dlkit up`, not by hand: python -m dlkit.kit.supervisor --home H --base-port P --ready-fd N ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from dlkit.kit.component import ComponentError
from dlkit.kit.probes import same_process
from dlkit.kit.stack import Stack

log = logging.getLogger("dlkit.kit.supervisor")

STATE_FILE = "state.json"
# How often the supervisor looks for dead servers: `dlkit status` is right within about this long.
SUPERVISE_EVERY_S = 0.5
MODULE = "dlkit.kit.supervisor"  # as it appears in the supervisor's command line


class _Shutdown(Exception):
    """Raised by the signal handler to unwind into the cleanup path."""


def read_state(home: Path) -> dict[str, Any] | None:
    try:
        return json.loads((home / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


def write_state(home: Path, state: dict[str, Any]) -> None:
    # Write then rename, so a reader never sees half a file.
    path = home / STATE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2))
    temporary.replace(path)


def running_supervisor(state: dict[str, Any]) -> psutil.Process | None:
    """The supervisor recorded in `state`, if it is alive and really is a dlkit supervisor."""
    recorded = state.get("supervisor", {})
    process = same_process(recorded.get("pid"), recorded.get("create_time"))
    try:
        if process and MODULE in process.cmdline():
            return process
    except psutil.NoSuchProcess:
        pass
    return None


def external_env(environ: dict[str, str]) -> dict[str, str]:
    """What the stack takes from the caller's environment: REDIS_URL and S3_* select external servers.

    Everything else in the environment reaches the API and workers anyway: they inherit it.
    """
    return {key: value for key, value in environ.items() if key == "REDIS_URL" or key.startswith("S3_")}


def _on_signal(signum: int, frame: object) -> None:
    # Once is enough: further signals must not interrupt the cleanup they started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Shutdown(signal.Signals(signum).name)


def _tell_parent(ready_fd: int, message: dict[str, Any]) -> None:
    with os.fdopen(ready_fd, "w") as pipe:
        pipe.write(json.dumps(message))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlkit.kit.supervisor")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--base-port", type=int, required=True)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-chain", action="store_true", help="no emulated edge and LB in front of nginx")
    parser.add_argument("--ready-fd", type=int, required=True, help="pipe to report readiness on")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    home = args.home.resolve()
    stack = Stack(
        home, args.base_port, args.time_scale, args.workers, env=external_env(dict(os.environ)), chain=not args.no_chain
    )
    try:
        try:
            stack.start()
        except ComponentError as error:
            log.error("%s", error)
            message = {"ready": False, "component": error.component, "error": str(error)}
            message["log"] = str(error.log_path) if error.log_path else None
            _tell_parent(args.ready_fd, message)
            return 1
        me = psutil.Process()
        write_state(home, {"supervisor": {"pid": me.pid, "create_time": me.create_time()}, **stack.describe()})
        _tell_parent(args.ready_fd, {"ready": True})
        log.info("stack ready at %s", stack.entry)
        while True:
            if stack.supervise():
                write_state(home, {"supervisor": {"pid": me.pid, "create_time": me.create_time()}, **stack.describe()})
            time.sleep(SUPERVISE_EVERY_S)
    except _Shutdown as reason:
        log.info("%s received, stopping the stack", reason)
        return 0
    finally:
        stack.stop()
        (home / STATE_FILE).unlink(missing_ok=True)
        log.info("stack stopped")


if __name__ == "__main__":
    sys.exit(main())
