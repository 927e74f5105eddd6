"""The one settings module: every knob of the API, the workers and the embedded stack.

Values come from the environment (names follow the original service: PORT, S3_ENDPOINT, ...).
Durations are given at real speed and read through `Settings.scaled()`, so TIME_SCALE shrinks
the whole story (work, timeouts, poll intervals, heartbeats) with the same proportions.
Nothing here is read at import time: call `Settings.from_env()` (the app factory and the
worker entry point do).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Contract limits (the API's OpenAPI document states them): not settings, because clients depend on them.
FILE_ID_MIN = 10_000
FILE_ID_MAX = 100_000_000
MAX_FILES_PER_JOB = 1000

# S3 refuses multipart parts under 5 MiB (except the last one).
S3_MIN_PART_SIZE = 5 * 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    # HTTP
    PORT: int = 8000
    REQUEST_TIMEOUT_MS: int = Field(30_000, gt=0)
    CORS_ORIGINS: str = "*"
    RATE_LIMIT_WINDOW_MS: int = Field(60_000, gt=0)
    RATE_LIMIT_MAX_REQUESTS: int = Field(600, gt=0)
    # Proxies in front that append to X-Forwarded-For (nginx = 1); 0 when clients connect directly.
    TRUSTED_PROXY_HOPS: int = Field(1, ge=0)
    # `key:user,key:user`; empty means one anonymous tenant (development only).
    API_KEYS: str = ""

    # Redis / Valkey: job records, the RQ queue and the rate limiter.
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    REDIS_SOCKET_TIMEOUT_S: float = Field(2.0, gt=0)
    QUEUE_NAME: str = "downloads"

    # S3-compatible storage for artifacts.
    S3_ENDPOINT: str | None = None
    # What clients can reach when it differs from the internal endpoint (compose, tunnels).
    S3_PUBLIC_ENDPOINT: str | None = None
    S3_REGION: str = "us-east-1"
    S3_ACCESS_KEY_ID: str | None = None
    S3_SECRET_ACCESS_KEY: str | None = None
    S3_BUCKET_NAME: str = "dlkit-downloads"
    S3_FORCE_PATH_STYLE: bool = False
    S3_MAX_ATTEMPTS: int = Field(4, ge=1)
    S3_PART_SIZE_BYTES: int = Field(8 * 1024 * 1024, ge=S3_MIN_PART_SIZE)
    # Parts of an artifact uploaded at once while the next is generated (dlkit/storage.py MultipartUpload):
    # a work horse holds up to this many parts + 1 in memory.
    S3_UPLOAD_CONCURRENCY: int = Field(3, ge=1)
    DOWNLOAD_URL_TTL_S: float = Field(300, gt=0)

    # Simulated work.
    TIME_SCALE: float = Field(1.0, gt=0, le=10)
    DOWNLOAD_DELAY_ENABLED: bool = True
    DOWNLOAD_DELAY_MIN_MS: int = Field(10_000, ge=0)
    DOWNLOAD_DELAY_MAX_MS: int = Field(120_000, ge=0)

    # Jobs.
    JOB_TTL_S: int = Field(24 * 3600, gt=0)
    POLL_INTERVAL_S: float = Field(5, gt=0)
    # Server-sent events send a comment this often, so no proxy on the way sees a silent stream.
    SSE_HEARTBEAT_S: float = Field(15, gt=0)
    # Each open stream holds a gunicorn thread: end it after this long; clients reconnect.
    SSE_MAX_STREAM_S: float = Field(300, gt=0)
    WORKER_HEARTBEAT_S: float = Field(5, gt=0)
    # A processing job whose heartbeat is older than this is lost (its worker died): the sweeper every
    # worker runs (worker/sweeper.py) re-queues it. 1.5 heartbeats, swept every quarter heartbeat: a lost
    # job is found within 2 heartbeats.
    JOB_STALE_AFTER_S: float = Field(7.5, gt=0)
    # Runs of a job whose worker is lost each time: it is re-queued until this many, then failed.
    JOB_MAX_ATTEMPTS: int = Field(3, ge=1)
    # Queued + processing jobs one owner may have; past it initiate answers 429. Each active job holds a
    # worker for 10-120 s: 20 covers a client downloading in parallel (the demo's polling users are
    # 1 per worker, at most 4), while one owner can queue at most 20 x 120 s of work ahead of the others.
    # 0 turns the cap off.
    MAX_ACTIVE_JOBS_PER_OWNER: int = Field(20, ge=0)
    # The largest artifact one job may build, known from its ids at initiate (dlkit/files.py): past it
    # initiate answers 422 before anything is written. 256 MiB is twice the largest zip of 1000 ids
    # drawn at random (about 1 in 7 is available: ~143 files of at most 1 MiB), so ordinary requests never
    # meet it, and it refuses the all-available 1000-id request (up to 1 GiB and a minute of a worker).
    MAX_JOB_BYTES: int = Field(256 * 1024 * 1024, gt=0)
    # `Prefer: wait=N` on initiate (RFC 7240): initiate holds the request at most this long for its job
    # to end, then answers 202 as without it. Real seconds, below the tightest read timeout on
    # initiate's path: nginx's 5 s in `location = /v1/download/initiate` (a request-handling guard,
    # which the local chain keeps unscaled too). `dlkit audit` fails when it is not below every timeout
    # on that path (dlkit/kit/audit.py). prefer_wait_max_s says how TIME_SCALE applies.
    PREFER_WAIT_MAX_S: float = Field(4, ge=0)
    # Requests waiting so in one API process, each holding a gunicorn thread (and a Redis connection)
    # for up to PREFER_WAIT_MAX_S: past it the preference is ignored and initiate answers 202 at once.
    # 4 of gunicorn's 16 threads, so that waiting clients never starve the polls. 0 turns waiting off.
    PREFER_MAX_WAITERS: int = Field(4, ge=0)

    # Tracing and error tracking (dlkit/telemetry.py), all off when empty. The sampler, the service
    # name and the exporter's other options are the SDK's own OTEL_* variables, read by it.
    OTEL_TRACES_EXPORTER: str = ""  # otlp | console | none, comma-separated
    OTEL_EXPORTER_OTLP_ENDPOINT: str = ""  # OTLP/HTTP base URL (e.g. http://jaeger:4318); /v1/traces is added
    TRACES_FILE: str = ""  # the kit's own: spans also appended here as JSON lines (embedded stack)
    SENTRY_DSN: str = ""

    @model_validator(mode="after")
    def _check_ranges(self) -> Settings:
        if self.DOWNLOAD_DELAY_MIN_MS > self.DOWNLOAD_DELAY_MAX_MS:
            raise ValueError("DOWNLOAD_DELAY_MIN_MS must not exceed DOWNLOAD_DELAY_MAX_MS")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Build settings from `environ` (default: os.environ) plus explicit overrides."""
        if environ is None:
            return cls(**overrides)
        known = {k: v for k, v in environ.items() if k in cls.model_fields}
        return cls.model_validate({**known, **overrides})

    def scaled(self, seconds: float) -> float:
        """A real-speed duration on this deployment's clock."""
        return seconds * self.TIME_SCALE

    # Derived, scaled values used by both API and worker.
    @property
    def request_timeout_s(self) -> float:
        return self.scaled(self.REQUEST_TIMEOUT_MS / 1000)

    @property
    def poll_interval_s(self) -> float:
        return self.scaled(self.POLL_INTERVAL_S)

    @property
    def sse_heartbeat_s(self) -> float:
        return self.scaled(self.SSE_HEARTBEAT_S)

    @property
    def sse_max_stream_s(self) -> float:
        return self.scaled(self.SSE_MAX_STREAM_S)

    @property
    def prefer_wait_max_s(self) -> float:
        # PREFER_WAIT_MAX_S is not scaled: the nginx timeout it stays under is not either. But never past
        # the app's own (scaled) REQUEST_TIMEOUT_MS, the longest it holds any request, which sits below the
        # LB's and the edge's timeouts; the local chain scales those (60 s LB -> 1.2 s at TIME_SCALE 0.02),
        # so there a wait is cut at 0.6 s, before the LB emulation would answer 504.
        return min(self.PREFER_WAIT_MAX_S, self.request_timeout_s)

    @property
    def heartbeat_s(self) -> float:
        return self.scaled(self.WORKER_HEARTBEAT_S)

    @property
    def stale_after_s(self) -> float:
        # Part uploads are not scaled, so keep a floor that a slow part cannot cross.
        return max(self.scaled(self.JOB_STALE_AFTER_S), 3.0)

    @property
    def sweep_interval_s(self) -> float:
        # A quarter heartbeat, but no busier than 4 Redis reads a second per worker at small TIME_SCALEs.
        return max(self.heartbeat_s / 4, 0.25)

    @property
    def download_url_ttl_s(self) -> int:
        # SigV4 expiry is whole seconds.
        return max(1, math.ceil(self.scaled(self.DOWNLOAD_URL_TTL_S)))

    @property
    def rate_limit(self) -> str:
        """Flask-Limiter notation; the window is not scaled (it is a quota, not a timeout)."""
        return f"{self.RATE_LIMIT_MAX_REQUESTS} per {max(1, self.RATE_LIMIT_WINDOW_MS // 1000)} second"

    @property
    def api_keys(self) -> dict[str, str]:
        """API key -> user name."""
        keys: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in self.API_KEYS.split(","))):
            key, sep, user = pair.partition(":")
            if not sep or not key or not user:
                raise ValueError("API_KEYS must look like 'key:user,key:user'")
            keys[key] = user
        return keys

    @property
    def cors_origins(self) -> list[str] | str:
        origins = [o.strip() for o in self.CORS_ORIGINS.split(",") if o.strip()]
        return "*" if origins == ["*"] else origins


# The longest simulated download at real speed (DOWNLOAD_DELAY_MAX_MS's default): what anything
# waiting on in-flight work (a client, the demo) must allow.
LONGEST_DOWNLOAD_S = Settings.model_fields["DOWNLOAD_DELAY_MAX_MS"].default / 1000
