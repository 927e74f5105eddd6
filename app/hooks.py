"""Request hooks for cross-cutting HTTP behaviour: request ids, security and rate-limit headers, JSON bodies."""

from __future__ import annotations

import math
import re
import time
import uuid

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import BadRequest

from .problems import Problem

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "Referrer-Policy": "no-referrer",
}


def retry_after(seconds: float) -> str:
    """Retry-After value. Whole seconds at real speed; when TIME_SCALE shrinks the poll interval
    below a second the value is fractional ("0.1"), which only the kit's scaled clients meet."""
    if seconds >= 1:
        return str(math.ceil(seconds))
    return f"{max(seconds, 0.001):.3f}".rstrip("0").rstrip(".")


def install(app: Flask) -> None:
    @app.before_request
    def _request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else str(uuid.uuid4())
        g.started = time.monotonic()

    @app.before_request
    def _json_body() -> None:
        # Before validation, so a client learns *why* its body was refused. A POST without a
        # body (cancel) is left to the route; an unknown route or method is answered as such
        # (404, 405 with Allow), whatever the body.
        has_body = bool(request.content_length) or request.headers.get("Transfer-Encoding") == "chunked"
        if request.method not in ("POST", "PUT", "PATCH") or not has_body or request.routing_exception:
            return
        if not request.is_json:
            raise Problem(
                415, "Unsupported Media Type", "Send the body as application/json.", slug="unsupported-media-type"
            )
        try:
            body = request.get_json()
        except (BadRequest, RecursionError):  # RecursionError: arrays or objects nested ~1000 deep
            raise Problem(
                400,
                "Malformed JSON",
                "The request body is not valid JSON, or is nested too deeply.",
                slug="malformed-json",
            ) from None
        if not isinstance(body, dict):
            # Every body of the API is an object (and a JSON string must not be parsed a second time).
            raise Problem(400, "Invalid request", "The request body must be a JSON object.", slug="validation-error")

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id") or str(uuid.uuid4())
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        _rate_limit_headers(response)
        return response


def _rate_limit_headers(response: Response) -> None:
    """IETF RateLimit-* headers (Reset in seconds from now) from Flask-Limiter's current window.

    Flask-Limiter's own header injection also rewrites Retry-After on every response, which
    would clobber the poll interval of the status endpoint, so the kit writes these itself.
    """
    current = current_app.extensions["dlkit"].limiter.current_limit
    if current is None:
        return
    response.headers["RateLimit-Limit"] = str(current.limit.amount)
    response.headers["RateLimit-Remaining"] = str(max(0, current.remaining))
    reset = max(0, math.ceil(current.reset_at - time.time()))
    response.headers["RateLimit-Reset"] = str(reset)
    if response.status_code == 429:
        response.headers["Retry-After"] = str(max(1, reset))
