"""What the app holds for its lifetime: connections, the job store, the queue, the limiter.

Created by `create_app` from its settings and kept on `app.extensions["dlkit"]`; nothing is
opened at import time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from flask import request
from flask_limiter import Limiter
from redis import Redis
from rq import Queue

from dlkit.jobs import JobStore
from dlkit.settings import Settings
from dlkit.storage import PresignedUrls, s3_client
from dlkit.workers import LiveWorkers


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


@dataclass(frozen=True)
class RouteLimit:
    """The per-client limit of the hot routes (status poll, initiate): the same fixed window as
    Flask-Limiter's (RATE_LIMIT_MAX_REQUESTS per RATE_LIMIT_WINDOW_MS, a budget of its own per route as
    Flask-Limiter's default limits are), but counted by the route itself with its own Redis work (the
    poll: in the pipeline that reads the job), instead of Flask-Limiter's three round trips. Those routes
    are skipped by Flask-Limiter (app/routes/jobs.py); every other route keeps it.

    Windows are aligned to the clock and the counter's key carries the window's number, so the reset
    time needs no TTL read, and a counter whose EXPIRE was lost only wastes memory, never blocks.
    """

    amount: int
    window_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RouteLimit:
        return cls(settings.RATE_LIMIT_MAX_REQUESTS, max(1, settings.RATE_LIMIT_WINDOW_MS // 1000))

    def key(self, route: str, client: str, now: float) -> str:
        # The limit is part of the key (as in Flask-Limiter's): a changed limit starts afresh.
        return f"dlkit:ratelimit:{route}:{self.amount}/{self.window_s}:{client}:{int(now // self.window_s)}"

    def headers(self, count: int, now: float) -> dict[str, str]:
        """IETF RateLimit-* headers after `count` requests in the window; Retry-After once past it."""
        reset = max(1, math.ceil((int(now // self.window_s) + 1) * self.window_s - now))
        headers = {
            "RateLimit-Limit": str(self.amount),
            "RateLimit-Remaining": str(max(0, self.amount - count)),
            "RateLimit-Reset": str(reset),
        }
        if count > self.amount:
            headers["Retry-After"] = str(reset)
        return headers


@dataclass
class Resources:
    settings: Settings
    redis: Redis
    limiter: Limiter

    @cached_property
    def api_keys(self) -> dict[str, str]:
        return self.settings.api_keys

    @cached_property
    def route_limit(self) -> RouteLimit:
        return RouteLimit.from_settings(self.settings)

    @cached_property
    def store(self) -> JobStore:
        return JobStore(self.redis, self.settings.JOB_TTL_S)

    @cached_property
    def queue(self) -> Queue:
        return Queue(self.settings.QUEUE_NAME, connection=self.redis)

    @cached_property
    def live_workers(self) -> LiveWorkers:
        """The workers that stamped themselves live lately (not RQ's registry: it keeps killed ones)."""
        return LiveWorkers(self.redis, self.settings.QUEUE_NAME, self.settings.stale_after_s)

    @cached_property
    def s3(self):
        """Internal endpoint: health checks."""
        return s3_client(self.settings, max_attempts=1)

    @cached_property
    def s3_public(self):
        """Public endpoint: presigned URLs clients can reach."""
        return s3_client(self.settings, public=True)

    @cached_property
    def download_urls(self) -> PresignedUrls:
        """Presigned URLs of the public endpoint, reused while more than half their life remains."""
        return PresignedUrls(self.s3_public)


def connect_redis(settings: Settings) -> Redis:
    # Short timeouts: with Redis down the API answers 503 in about a second instead of hanging.
    return Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=1,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT_S,
        health_check_interval=30,
    )
