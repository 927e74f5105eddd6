"""Live checks of the embedded servers, shared by readiness, Stack.health(), the supervisor and
`dlkit status` (which runs in another process and reads the probes from state.json).

A probe is a string: redis://host:port/db, tcp://host:port, http://host:port/path, rq-worker://<name>.
"""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlsplit

import psutil
import redis
from rq import Worker


def same_process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The live process `pid` if it is the one recorded (same start time), not a reused pid and not
    a zombie: a killed server that its parent has not reaped yet is dead, not running."""
    if pid is None or create_time is None:
        return None
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) < 0.01 and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except psutil.NoSuchProcess:
        pass
    return None


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
    return worker is not None and worker.pid in process_family(pid)


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


def process_family(pid: int) -> set[int]:
    try:
        process = psutil.Process(pid)
        return {pid, *(child.pid for child in process.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()
