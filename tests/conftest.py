"""Fixtures: one real embedded stack per test session (Valkey, SeaweedFS, RQ workers, gunicorn,
nginx on 127.0.0.1), clients that talk to it through nginx, and helpers to wait on jobs; and a
Valkey of its own for the tests that need Redis and nothing else.

TIME_SCALE 0.02 makes a 10-120 s download take 0.2-2.4 s with the same proportions.

Tiers: every test that uses a stack fixture is marked `stack` here, so `pytest -m "not stack and
not slow"` (make test-fast) runs the pure-logic and single-server tests in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from flask import Flask
from redis import Redis

from app import create_app
from dlkit.kit.component import unmatchable
from dlkit.kit.recipes import valkey_binary
from dlkit.kit.stack import Stack, free_base_port
from dlkit.settings import Settings

from .support import API_KEYS, client_for

TIME_SCALE = 0.02
STACK_ENV = {
    "API_KEYS": ",".join(f"{key}:{user}" for user, key in API_KEYS.items()),
    # 250 s at this scale: a presigned URL lives 5 s, long enough for a loaded machine to fetch it
    # (S3 counts from the signing second, so 1 s could leave a tenth), short enough to see it expire.
    "DOWNLOAD_URL_TTL_S": "250",
    # Scaled clients poll every 0.1 s: the per-client limit is tested on its own (test_service.py).
    "RATE_LIMIT_MAX_REQUESTS": "100000",
}


# Fixtures that start a whole embedded stack. `fixturenames` is the closure of what a test uses, so a
# test that asks for `alice` (a client of the session stack) is a stack test too.
STACK_FIXTURES = {"stack", "slow", "chain"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if STACK_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def valkey(tmp_path_factory):
    """A Valkey server of its own (no stack), for tests that need Redis and nothing else."""
    from mirakuru import TCPExecutor

    port = free_base_port(span=1)
    data = tmp_path_factory.mktemp("valkey")
    server = unmatchable(
        TCPExecutor(
            [
                valkey_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(data),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            host="127.0.0.1",
            port=port,
            timeout=15,
        )
    )
    server.start()
    client = Redis(port=port)
    yield client
    client.close()
    server.stop()


def start_stack(home: Path, workers: int = 2, **env: str) -> Stack:
    stack = Stack(
        home=home, base_port=free_base_port(), time_scale=TIME_SCALE, workers=workers, env={**STACK_ENV, **env}
    )
    stack.start()
    return stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    stack = start_stack(tmp_path_factory.mktemp("stack"))
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def settings(stack) -> Settings:
    """The settings the stack's API and workers run with, as a test process sees them."""
    return Settings.from_env({**stack.client_env(), **STACK_ENV})


@pytest.fixture(scope="session")
def redis(settings):
    client = Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> Stack:
    """A stack of the module's own whose API and worker write their spans to `home/spans.jsonl`."""
    home = tmp_path_factory.mktemp("traced-stack")
    stack = start_stack(home, workers=1, TRACES_FILE=str(home / "spans.jsonl"))
    yield stack
    stack.stop()


@dataclass
class Kit:
    """A running stack with what a test needs to talk to it."""

    stack: Stack
    settings: Settings
    redis: Redis

    def client(self, user: str | None = "alice") -> httpx.Client:
        return client_for(self.stack, user)


@pytest.fixture(scope="session")
def slow(tmp_path_factory) -> Kit:
    """A second stack whose every job takes the longest delay (120 s, 2.4 s scaled), so that
    cancel and fault tests can act while a job is surely running. Tests that stop one of its
    components start it again."""
    stack = start_stack(tmp_path_factory.mktemp("slow-stack"), DOWNLOAD_DELAY_MIN_MS="120000")
    settings = Settings.from_env({**stack.client_env(), **STACK_ENV, "DOWNLOAD_DELAY_MIN_MS": "120000"})
    kit = Kit(stack, settings, Redis.from_url(settings.REDIS_URL))
    yield kit
    kit.redis.close()
    stack.stop()


@pytest.fixture
def workers_stopped(slow):
    """Stop every worker of the slow stack so that new jobs stay queued; start them again afterwards."""
    names = [n for n in slow.stack.components if n.startswith("worker")]
    for name in names:
        slow.stack.stop_component(name)
    yield
    for name in names:
        slow.stack.start_component(name)


@pytest.fixture
def make_app(settings):
    """`create_app()` in this process on the session stack's Redis, with settings overridden; closed at
    teardown (a socket left to the garbage collector is an error when the session ends)."""
    apps = []

    def make(**overrides: object) -> Flask:
        apps.append(create_app(settings.model_copy(update=overrides)))
        return apps[-1]

    yield make
    for app in apps:
        resources = app.extensions["dlkit"]
        resources.redis.close()
        resources.limiter.storage.get_connection().close()


@pytest.fixture
def alice(stack):
    with client_for(stack, "alice") as client:
        yield client


@pytest.fixture
def bob(stack):
    with client_for(stack, "bob") as client:
        yield client
