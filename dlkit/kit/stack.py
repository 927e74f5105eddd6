"""The embedded stack: Valkey, SeaweedFS, the API under gunicorn, RQ workers, nginx, the emulated LB
and edge, and Prometheus, on 127.0.0.1.

Each server is one recipe (dlkit/kit/recipes.py); the Stack only orders them: started in dependency
order, each ready before the next, stopped in reverse, and brought back when one dies (`supervise`).
A Stack lives in a long-running process (a process's servers are killed when it exits, component.py):
`dlkit up` keeps one in dlkit/kit/supervisor.py; tests and the demo's layers hold one in-process.

Everything a stack writes lives under its home directory, and every port is a fixed offset from one
base port, so two stacks with different homes and base ports run side by side.
"""

from __future__ import annotations

import logging
import random
import socket
from pathlib import Path
from typing import Any

import psutil
from botocore.exceptions import BotoCoreError, ClientError

from dlkit.kit import ROOT, recipes
from dlkit.kit.component import HOST, Component, ComponentError
from dlkit.kit.recipes import Site, prometheus_binary, s3_credentials
from dlkit.storage import ensure_bucket

log = logging.getLogger(__name__)

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
    **{f"worker_metrics_{index}": 11 + index for index in range(1, MAX_WORKERS + 1)},
    "lb": 16,
    "nginx": 17,
    # Each proxy's request counters (proxy/nginx/metrics.conf.template), for Prometheus.
    "edge_metrics": 18,
    "lb_metrics": 19,
    "nginx_metrics": 20,
}
PROXIES = ("nginx", "lb", "edge")  # inside out


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


def service_env(home: Path, ports: dict[str, int], time_scale: float, overrides: dict[str, str]) -> dict[str, str]:
    """What the API and the workers get: the embedded Valkey and SeaweedFS unless `overrides` names
    external ones (REDIS_URL, S3_ENDPOINT), the overrides, and the one clock."""
    env: dict[str, str] = {}
    if "REDIS_URL" not in overrides:
        env["REDIS_URL"] = f"redis://{HOST}:{ports['valkey']}/0"
    if "S3_ENDPOINT" not in overrides:
        access_key, secret_key = s3_credentials(home)
        env |= {
            "S3_ENDPOINT": f"http://{HOST}:{ports['s3']}",
            "S3_REGION": S3_REGION,
            "S3_ACCESS_KEY_ID": access_key,
            "S3_SECRET_ACCESS_KEY": secret_key,
            "S3_FORCE_PATH_STYLE": "true",
        }
    env |= overrides
    env.setdefault("S3_PUBLIC_ENDPOINT", env["S3_ENDPOINT"])
    env.setdefault("S3_BUCKET_NAME", DEFAULT_BUCKET)
    # The one clock: the proxies' timeouts are rendered from the same value.
    env["TIME_SCALE"] = f"{time_scale:g}"
    return env


class Stack:
    """The local servers of one dlkit deployment, in dependency order.

    `env` overrides what the API and workers get. A REDIS_URL in it means an external Redis (no Valkey
    is started); an S3_ENDPOINT means external S3 (no SeaweedFS; the bucket is still ensured).
    `config_root` is where the proxy files are read from (tests and the demo's layers use edited copies).
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
        home = Path(home).resolve()
        home.mkdir(parents=True, exist_ok=True)
        self.base_port = base_port
        self.chain = chain
        ports = {name: base_port + offset for name, offset in PORT_OFFSETS.items()}
        overrides = dict(env or {})
        self.external_redis = "REDIS_URL" in overrides
        self.external_s3 = "S3_ENDPOINT" in overrides
        self.site = Site(f"dlkit-{base_port}", home, ports, {}, time_scale, Path(config_root))
        self.site.env = service_env(home, ports, time_scale, overrides)

        order: list[Component] = []
        if not self.external_redis:
            order.append(recipes.valkey(self.site))
        if not self.external_s3:
            order.append(recipes.seaweedfs(self.site))
        order.append(recipes.api(self.site))
        order += [recipes.worker(self.site, index) for index in range(1, workers + 1)]
        proxies = list(PROXIES if chain else PROXIES[:1])
        order += [recipes.proxy(self.site, name) for name in proxies]
        # Last: it scrapes everything above. Only where the OS package is installed (see the Makefile).
        if prometheus and prometheus_binary() is not None:
            order.append(recipes.prometheus(self.site, workers, proxies))
        self.components: dict[str, Component] = {component.name: component for component in order}

    # What tests and the CLI read.
    home = property(lambda self: self.site.home)
    ports = property(lambda self: self.site.ports)
    name = property(lambda self: self.site.name)
    time_scale = property(lambda self: self.site.time_scale)
    config_root = property(lambda self: self.site.config_root)

    @property
    def entry(self) -> str:
        """The URL clients use: the edge of the emulated chain, or nginx without it."""
        return f"http://{HOST}:{self.ports['edge' if self.chain else 'nginx']}"

    @property
    def redis_url(self) -> str:
        return self.site.redis_url

    def client_env(self) -> dict[str, str]:
        """What a process needs to reach the same servers: REDIS_URL, S3_*, TIME_SCALE, overrides."""
        return dict(self.site.env)

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

    def supervise(self) -> list[str]:
        """Restart, in dependency order, each component that died (with backoff, component.py).
        Returns the names restarted by this call; call it every half second or so."""
        return [name for name, component in self.components.items() if component.revive()]

    def stop_component(self, name: str) -> None:
        self.components[name].stop()

    def start_component(self, name: str) -> None:
        self.components[name].start()

    def health(self) -> dict[str, bool]:
        return {name: component.health(self.redis_url) for name, component in self.components.items()}

    def proxy_files(self, name: str) -> dict[str, str]:
        """The files of proxy `name` ("nginx", "lb", "edge") as this stack renders them."""
        return recipes.proxy_files(self.site, name)

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
                "restarts": component.restarts,
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

    def reconfigure(self, config_root: Path | None = None, env: dict[str, str] | None = None) -> None:
        """Apply other proxy files (`config_root`) and/or API settings (`env`): restarts the proxies,
        and the API when `env` changes. Tests and the demo use it to make each layer the tightest."""
        if config_root is not None:
            self.site.config_root = Path(config_root)
        names = [name for name in PROXIES if name in self.components]
        if env:
            self.site.env.update(env)
            self.components["api"].env.update(env)
            names.insert(0, "api")
        for name in reversed(names):
            self.stop_component(name)
        for name in names:
            self.start_component(name)

    def _ensure_external_bucket(self) -> None:
        try:
            ensure_bucket(self.site.env)
        except (BotoCoreError, ClientError) as error:
            bucket = self.site.env["S3_BUCKET_NAME"]
            raise ComponentError("s3", f"bucket {bucket!r} is not usable: {error}") from None
