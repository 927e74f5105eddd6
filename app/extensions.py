"""What the app holds for its lifetime: connections, the job store, the queue, the limiter.

Created by `create_app` from its settings and kept on `app.extensions["dlkit"]`; nothing is
opened at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from flask import request
from flask_limiter import Limiter
from redis import Redis
from rq import Queue

from dlkit.jobs import JobStore
from dlkit.settings import Settings
from dlkit.storage import s3_client


def rate_limit_key() -> str:
    """Per client: the API key's user when authenticated, else the client address."""
    from .auth import current_owner
    from .problems import Problem

    if request.headers.get("Authorization"):
        try:
            return f"user:{current_owner()}"
        except Problem:
            pass  # bad keys are limited by address, and answered 401 by the route
    return f"ip:{request.remote_addr}"


def make_limiter(settings: Settings) -> Limiter:
    """Per-client limits counted in Redis, so every API instance shares the same budget."""
    return Limiter(
        key_func=rate_limit_key,
        default_limits=[settings.rate_limit],
        storage_uri=settings.REDIS_URL,
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 1},
        strategy="fixed-window",
        # Redis down must not turn every request into a 500: count in memory until it is back.
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )


@dataclass
class Resources:
    settings: Settings
    redis: Redis
    limiter: Limiter

    @cached_property
    def api_keys(self) -> dict[str, str]:
        return self.settings.api_keys

    @cached_property
    def store(self) -> JobStore:
        return JobStore(self.redis, self.settings.JOB_TTL_S)

    @cached_property
    def queue(self) -> Queue:
        return Queue(self.settings.QUEUE_NAME, connection=self.redis)

    @cached_property
    def s3(self):
        """Internal endpoint: health checks."""
        return s3_client(self.settings, max_attempts=1)

    @cached_property
    def s3_public(self):
        """Public endpoint: presigned URLs clients can reach."""
        return s3_client(self.settings, public=True)


def connect_redis(settings: Settings) -> Redis:
    # Short timeouts: with Redis down the API answers 503 in about a second instead of hanging.
    return Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=1,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT_S,
        health_check_interval=30,
    )
