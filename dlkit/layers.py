"""The layers of the request chain, and which one answered a response.

    client -> edge (Cloudflare) -> lb (AWS ALB) -> nginx -> gunicorn -> app

Pure logic with no dependencies, so a Locust process or a client can import it without the
config readers of dlkit.kit.timeouts.
"""

from __future__ import annotations

from collections.abc import Mapping

# Innermost first: on equal timeouts the innermost layer fires and the outer ones relay its answer.
LAYERS = ("app", "nginx", "lb", "edge")
# What a client receives when that layer's timeout cuts a request that sends nothing until done.
TIMEOUT_STATUS = {"app": 504, "nginx": 504, "lb": 504, "edge": 524}
# Cloudflare's own 52x answers: its origin sent garbage (520), refused (521, 522), was unreachable
# (523), said nothing within the proxy read timeout (524), or failed TLS (525, 526).
CLOUDFLARE_STATUSES = range(520, 530)


def _header(headers: Mapping[str, str], name: str) -> str:
    # requests/httpx headers are case-insensitive; a plain dict from a test may not be.
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), "")
    return value or ""


def layer_of(status: int, headers: Mapping[str, str]) -> str:
    """Which hop answered: "ok", "client-error", or the layer that made a 5xx itself
    ("app", "nginx", "lb", "edge"; "unknown" when nothing says).

    Reads what the real layers send, so the same classification works against the local
    emulation, docker compose and staging:
    - the kit's own proxies (local chain and compose) mark their errors with `X-Dlkit-Layer`;
    - the app answers `application/problem+json` without that header;
    - Cloudflare answers 52x itself, and its own error pages carry `Server: cloudflare`
      (a response relayed from the origin keeps the origin's content type);
    - an ALB's own answers carry `Server: awselb/2.0`;
    - a stock nginx's error pages carry `Server: nginx` and an HTML body.
    """
    if status < 400:
        return "ok"
    if status < 500:
        return "client-error"
    marked = _header(headers, "X-Dlkit-Layer")
    if marked:
        return marked
    content_type = _header(headers, "Content-Type").lower()
    if "application/problem+json" in content_type:
        return "app"
    server = _header(headers, "Server").lower()
    if status in CLOUDFLARE_STATUSES or (server == "cloudflare" and "text/html" in content_type):
        return "edge"
    if server.startswith("awselb"):
        return "lb"
    if server.startswith("nginx"):
        return "nginx"
    return "unknown"
