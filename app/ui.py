"""The browser page at /ui/: three static files (no build step, no framework) that drive the
job API like any other client: initiate, follow progress (server-sent events, polling as the
fallback), cancel, download.

The page is same-origin with the API, so a strict Content-Security-Policy fits: no inline
script or style, everything from 'self', and fetch() only to this origin. The presigned S3 URL
is reached by navigation (a download), which connect-src does not govern.
"""

from __future__ import annotations

from flask import Blueprint, Response

bp = Blueprint("ui", __name__, url_prefix="/ui", static_folder="static/ui", static_url_path="")

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)


@bp.get("/")
def index() -> Response:
    return bp.send_static_file("index.html")


@bp.after_request
def _content_security_policy(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response
