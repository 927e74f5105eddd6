"""RFC 9457 problem details: the one error shape of the API, for every status code.

Every error (validation, auth, unknown job, rate limit, Redis or S3 down, a bug) leaves here as
`application/problem+json` carrying the request id; never a stack trace, never an HTML page.
"""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError
from flask import Flask, Response, g, json, request
from flask_limiter.errors import RateLimitExceeded
from pydantic import ValidationError
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from dlkit import telemetry

log = logging.getLogger(__name__)

PROBLEM_TYPE = "urn:dlkit:problem:{}"


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra,
    ):
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    slug: str | None = None,
    headers: dict[str, str] | None = None,
    **extra,
) -> Response:
    body = {
        "type": PROBLEM_TYPE.format(slug) if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path,
        "requestId": g.get("request_id"),
        "traceId": telemetry.trace_id(),  # None (left out) when tracing is off
        **extra,
    }
    response = Response(
        json.dumps({k: v for k, v in body.items() if v is not None}), status=status, mimetype="application/problem+json"
    )
    response.headers.update(headers or {})
    return response


def validation_problem(error: ValidationError) -> Response:
    """flask-openapi3's validation_error_callback: pydantic errors become a 400 problem."""
    errors = [
        {"loc": ".".join(str(p) for p in e["loc"]) or "body", "msg": e["msg"], "type": e["type"]}
        for e in error.errors(include_url=False, include_input=False)
    ]
    return problem_response(
        400, "Invalid request", "The request does not match the API contract.", slug="validation-error", errors=errors
    )


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(e: Problem):
        return problem_response(e.status, e.title, e.detail, slug=e.slug, headers=e.headers, **e.extra)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(e: RateLimitExceeded):
        return problem_response(
            429,
            "Too Many Requests",
            f"Rate limit of {e.description} exceeded; retry after Retry-After seconds.",
            slug="rate-limited",
        )

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        if e.response is not None and e.response.mimetype == "application/problem+json":
            return e.response  # already a problem (validation errors come this way)
        headers = {k: v for k, v in e.get_headers() if k.lower() in ("allow", "retry-after", "www-authenticate")}
        return problem_response(e.code or 500, e.name, e.description, headers=headers)

    @app.errorhandler(RedisError)
    def _redis_down(e: RedisError):
        log.warning("redis unavailable: %s", e)
        return problem_response(
            503,
            "Service unavailable",
            "The job store (Redis) is unreachable; retry shortly.",
            slug="redis-unavailable",
            headers={"Retry-After": "5"},
        )

    @app.errorhandler(BotoCoreError)
    @app.errorhandler(ClientError)
    def _s3_down(e: Exception):
        log.warning("storage unavailable: %s", e)
        return problem_response(
            503,
            "Service unavailable",
            "Object storage (S3) is unreachable; retry shortly.",
            slug="storage-unavailable",
            headers={"Retry-After": "5"},
        )

    @app.errorhandler(Exception)
    def _bug(e: Exception):
        log.exception("unhandled error")
        return problem_response(500, "Internal Server Error", "An unexpected error occurred; it has been logged.")
