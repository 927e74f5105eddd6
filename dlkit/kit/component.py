"""One embedded server: how to start it and know it is ready, how to stop it, how to bring it back.

Every server runs under a mirakuru executor, which starts it in its own process group, waits until
its readiness check passes and stops it by that group. A component that dies is started again by
`revive()`, with exponential backoff between tries; its data and its log (appended) are kept.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mirakuru.base
from mirakuru import AlreadyRunning, Executor, ProcessExitedWithError, TimeoutExpired
from mirakuru.exceptions import ProcessFinishedWithError

from dlkit.kit.probes import check, tcp_answers

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # every embedded server listens on loopback only

# Restart policy: the first retry after half a second, doubling up to 30 s; a component that stayed
# up a minute starts again from half a second when it next dies.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0


# mirakuru marks each server it starts with an environment variable, and when any Python process that
# imported mirakuru exits, its exit hook SIGKILLs every process whose marker *contains* that process's
# pid as a substring. So a `dlkit status` with pid 4321 could kill another stack's gunicorn whose
# marker happened to hold "4321" (it did, in CI). Hence: markers without digits, which no pid can
# match; mirakuru's hook off; and our own hook, which kills exactly the servers this process started.
_DIGITS_TO_LETTERS = str.maketrans("0123456789", "ghijklmnop")
atexit.unregister(mirakuru.base.cleanup_subprocesses)


def unmatchable(executor: Executor) -> Executor:
    """Give a mirakuru executor, before it starts, a marker no exiting process's pid can match."""
    executor._uuid = "dlkit-" + uuid.uuid4().hex.translate(_DIGITS_TO_LETTERS)
    return executor


class ComponentError(RuntimeError):
    """A component did not start or become ready; names it and points at its log."""

    def __init__(self, component: str, reason: str, log_path: Path | None = None) -> None:
        where = f"; see {log_path}" if log_path else ""
        super().__init__(f"{component} {reason}{where}")
        self.component = component
        self.log_path = log_path


class ReadyWhen(Executor):
    """A mirakuru Executor that is ready when `ready(pid)` passes.

    With `port`, it refuses to start when something already answers there (like TCPExecutor).
    """

    def __init__(self, command: list[str], *, ready: Callable[[int], bool], port: int | None = None, **kwargs: Any):
        super().__init__(command, **kwargs)
        self._ready = ready
        self._port = port

    def pre_start_check(self) -> bool:
        return self._port is not None and tcp_answers(HOST, self._port)

    def after_start_check(self) -> bool:
        return self.process is not None and self._ready(self.process.pid)


@dataclass(eq=False)
class Component:
    """One server process: how to build its executor, how to probe it, where it logs.

    `build` receives the keyword arguments every executor shares (timeout, environment, output
    to the log file) and returns a mirakuru executor whose start() blocks until the server is ready.
    """

    name: str
    url: str | None
    probe: str
    log_path: Path
    timeout: float
    env: dict[str, str]
    build: Callable[..., Executor]
    before_start: Callable[[], None] | None = None
    executor: Executor | None = None
    restarts: int = 0
    # Supervision state: wanted between start() and stop(); when the next restart may be tried.
    _wanted: bool = field(default=False, repr=False)
    _up_since: float = field(default=0.0, repr=False)
    _backoff_s: float = field(default=0.0, repr=False)
    _next_try: float = field(default=0.0, repr=False)

    @property
    def pid(self) -> int | None:
        process = self.executor.process if self.executor else None
        return process.pid if process else None

    def running(self) -> bool:
        # mirakuru polls the child: a killed server is reaped here, not left a zombie.
        return self.executor is not None and self.executor.running()

    def start(self) -> None:
        """Start the process and block until it is ready; on failure nothing of it is left running."""
        if self.running():
            return
        self._wanted = True
        if self.before_start:
            self.before_start()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The child gets its own copy of the descriptor, so ours can be closed right away.
        with open(self.log_path, "ab") as log_file:
            executor = unmatchable(
                self.build(
                    timeout=self.timeout,  # to become ready, and again to stop before SIGKILL
                    sleep=0.1,
                    envvars=self.env,  # on top of this process's own environment
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            )
            try:
                executor.start()
            except AlreadyRunning:
                raise ComponentError(self.name, "cannot start: its port is already in use", self.log_path) from None
            except TimeoutExpired:
                # mirakuru has killed the process by now.
                reason = f"did not become ready within {self.timeout:g} s"
                raise ComponentError(self.name, reason, self.log_path) from None
            except ProcessExitedWithError as error:
                raise ComponentError(self.name, f"exited with code {error.exit_code}", self.log_path) from None
            except BaseException:
                executor.kill()
                raise
        self.executor = executor
        self._up_since = time.monotonic()
        _started_here.add(self)

    def stop(self) -> None:
        """Stop the process group (SIGTERM, then SIGKILL after the component's timeout). Idempotent."""
        self._wanted = False
        if self.executor is None:
            return
        try:
            self.executor.stop()
        except ProcessFinishedWithError as error:
            # Stopped all the same; a non-zero exit on SIGTERM is worth a line in the log, not a failure.
            log.warning("%s exited with code %s while stopping", self.name, error.exit_code)
        finally:
            self.executor = None
            _started_here.discard(self)

    def revive(self) -> bool:
        """If the process died while wanted, start it again, backing off between failed tries.
        True when it was restarted by this call. Never raises: a failed try is logged and retried."""
        if not self._wanted or self.running():
            return False
        now = time.monotonic()
        if self.executor is not None:  # just found dead
            self._kill_group()
            stable = now - self._up_since > STABLE_AFTER_S
            self._backoff_s = BACKOFF_FIRST_S if stable else self._longer_backoff()
            self._next_try = now + (0 if stable else self._backoff_s)
            log.warning("%s died; restarting %s", self.name, "now" if stable else f"in {self._backoff_s:g} s")
        if now < self._next_try:
            return False
        try:
            self.start()
        except ComponentError as error:
            self._backoff_s = self._longer_backoff()
            self._next_try = time.monotonic() + self._backoff_s
            log.error("%s: restart failed (%s); next try in %g s", self.name, error, self._backoff_s)
            return False
        self.restarts += 1
        log.warning("%s restarted (pid %s, restart %d)", self.name, self.pid, self.restarts)
        return True

    def _longer_backoff(self) -> float:
        return min(max(2 * self._backoff_s, BACKOFF_FIRST_S), BACKOFF_MAX_S)

    def _kill_group(self) -> None:
        """SIGKILL the server's whole process group and reap it. For a dead server, what is left of it
        (an RQ work horse, nginx workers): they are this component's, and a restart must not run beside them.

        The server led its own process group (mirakuru starts it with setsid), and Linux never gives
        a new process the id of a group that still has members, so the group is surely ours. mirakuru
        alone would miss children that drop its environment marker, as nginx workers do.
        """
        group = self.executor.process.pid if self.executor.process else None
        if group is not None:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass  # nothing left of it
        try:
            self.executor.kill(wait=True)
        except (ProcessFinishedWithError, OSError):
            pass
        self.executor = None

    def health(self, redis_url: str | None) -> bool:
        return self.running() and check(self.probe, self.pid, redis_url)


# Components this process started and has not stopped: what the exit hook kills.
_started_here: weakref.WeakSet[Component] = weakref.WeakSet()


@atexit.register
def _kill_what_this_process_started() -> None:
    for component in list(_started_here):
        if component.executor is not None:
            component._kill_group()
