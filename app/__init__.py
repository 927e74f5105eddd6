"""The HTTP API. `create_app()` builds it; gunicorn serves `app:create_app()` (see gunicorn_conf.py)."""

from __future__ import annotations

from flask_cors import CORS
from flask_openapi3 import Info, OpenAPI
from werkzeug.middleware.proxy_fix import ProxyFix

from dlkit import telemetry
from dlkit.settings import Settings

from . import hooks, metrics, ui
from .extensions import Resources, connect_redis, make_limiter
from .problems import register_error_handlers, validation_problem
from .routes import jobs, legacy, service
from .schemas import Problem


def create_app(settings: Settings | None = None) -> OpenAPI:
    """Build the app. Tests pass `settings`; gunicorn and `flask run` read the environment."""
    settings = settings or Settings.from_env()
    app = OpenAPI(
        __name__,
        info=Info(
            title="dlkit download service",
            version="1.0.0",
            description="Long downloads as asynchronous jobs: initiate, poll status, download, cancel. "
            "Every error is RFC 9457 problem details (application/problem+json), whichever "
            "layer answers; a method a path does not list gets 405 with Allow.",
        ),
        doc_prefix="/docs",
        security_schemes={
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key from API_KEYS (none needed when it is unset).",
            }
        },
        validation_error_status=400,
        # Also what puts Problem in components/schemas, where every error response refers to it.
        validation_error_model=Problem,
        validation_error_callback=validation_problem,
    )
    app.json.sort_keys = False
    if settings.TRUSTED_PROXY_HOPS:
        # Real client address from X-Forwarded-For, trusting only the proxies we know are there.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.TRUSTED_PROXY_HOPS, x_proto=settings.TRUSTED_PROXY_HOPS)

    telemetry.setup(settings, "dlkit-api")  # off unless OTEL_TRACES_EXPORTER, TRACES_FILE or SENTRY_DSN
    telemetry.instrument_app(app)
    metrics.install(app)  # before every other hook: times and counts even the requests they refuse
    hooks.install(app)  # next: every later hook, the limiter's included, sees the request id
    limiter = make_limiter(settings)
    limiter.init_app(app)
    app.extensions["dlkit"] = Resources(settings=settings, redis=connect_redis(settings), limiter=limiter)
    metrics.attach_store(app)
    CORS(
        app,
        origins=settings.cors_origins,
        expose_headers=[
            "Location",
            "Retry-After",
            "X-Request-ID",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
            "Idempotent-Replayed",
            "Preference-Applied",
            "Content-Location",
        ],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID", "Prefer"],
    )
    register_error_handlers(app)

    # Health checks from load balancers and the docs are never rate limited; nor are the page's
    # static files (app/ui.py), so a rate-limited user still gets the page that explains the 429.
    limiter.exempt(service.bp)
    limiter.exempt(ui.bp)
    app.register_api(service.bp)
    app.register_api(legacy.bp)
    app.register_api(jobs.bp)
    app.register_blueprint(ui.bp)
    return app
