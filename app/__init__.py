"""The HTTP API. `create_app()` builds it; gunicorn serves `app:create_app()` (see gunicorn_conf.py)."""

from __future__ import annotations

from flask_cors import CORS
from flask_openapi3 import Info, OpenAPI
from werkzeug.middleware.proxy_fix import ProxyFix

from dlkit.settings import Settings

from . import http
from .extensions import Resources, connect_redis, limiter
from .problems import register_error_handlers, validation_problem


def create_app(settings: Settings | None = None) -> OpenAPI:
    """Build the app. Tests pass `settings`; gunicorn and `flask run` read the environment."""
    settings = settings or Settings.from_env()
    app = OpenAPI(
        __name__,
        info=Info(title="dlkit download service", version="1.0.0",
                  description="Long downloads as asynchronous jobs: initiate, poll status, download, cancel."),
        doc_prefix="/docs",
        validation_error_status=400,
        validation_error_callback=validation_problem,
    )
    app.json.sort_keys = False
    if settings.TRUSTED_PROXY_HOPS:
        # Real client address from X-Forwarded-For, trusting only the proxies we know are there.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.TRUSTED_PROXY_HOPS, x_proto=settings.TRUSTED_PROXY_HOPS)

    redis = connect_redis(settings)
    app.extensions["dlkit"] = Resources(settings=settings, redis=redis)

    app.config.update(
        RATELIMIT_STORAGE_URI=settings.REDIS_URL,
        RATELIMIT_STORAGE_OPTIONS={"socket_connect_timeout": 1, "socket_timeout": 1},
        RATELIMIT_DEFAULT=settings.rate_limit,
        RATELIMIT_STRATEGY="fixed-window",
        # Redis down must not turn every request into a 500: count in memory until it is back.
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
    )
    limiter.init_app(app)
    CORS(app, origins=settings.cors_origins,
         expose_headers=["Location", "Retry-After", "X-Request-ID", "RateLimit-Limit", "RateLimit-Remaining",
                         "RateLimit-Reset", "Idempotent-Replayed"],
         allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"])
    http.install(app)
    register_error_handlers(app)

    from .routes import jobs, legacy, service

    app.register_api(service.bp)
    app.register_api(legacy.bp)
    app.register_api(jobs.bp)
    return app
