"""The local request chain, rendered from the production files with every duration scaled.

    client -> edge (Cloudflare-like) -> lb (ALB-like) -> nginx (proxy/nginx) -> gunicorn -> app

The production files hold real values: proxy/nginx/dlkit.conf.template, the Cloudflare proxy read
timeout (proxy/cloudflare) and the ALB idle timeout (proxy/alb), read by dlkit/timeouts.py, the
same reader `dlkit audit` uses. The local stack renders copies in which every duration is multiplied
by TIME_SCALE, so at 0.02 the whole chain keeps its proportions and runs in seconds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .timeouts import NGINX_CONF, ROOT, read_chain

# The production server block is the file the audit reads (dlkit/timeouts.py).
NGINX_TEMPLATE = NGINX_CONF
LOCAL_WRAPPER = Path("proxy/nginx/local.conf.template")
EDGE_TEMPLATE = Path("proxy/emulation/edge.conf.template")
LB_TEMPLATE = Path("proxy/emulation/lb.conf.template")
METRICS_TEMPLATE = Path("proxy/nginx/metrics.conf.template")

# nginx directives whose value is a duration.
DURATIONS = (
    "proxy_connect_timeout",
    "proxy_send_timeout",
    "proxy_read_timeout",
    "keepalive_timeout",
    "client_header_timeout",
    "client_body_timeout",
    "send_timeout",
)
# No scaled duration goes below 1 s. The timeouts that stand for long work (the legacy route, the
# LB, the edge) stay above it at any sensible TIME_SCALE; those sized for real request handling
# (a status poll: 5 s) would otherwise shrink to 100 ms, while a status call's real cost does not
# shrink with TIME_SCALE, and a loaded CI machine would see 504s the production chain never would.
FLOOR_S = 1.0
CONNECT_TIMEOUT_S = 5

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}
_DURATION = re.compile(r"^(?P<indent>\s*)(?P<name>%s)\s+(?P<value>\d+)(?P<unit>ms|s|m|h)?\s*;" % "|".join(DURATIONS),
                       re.MULTILINE)
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def fill(text: str, values: dict[str, Any]) -> str:
    """Replace `${UPPER_CASE}` placeholders (envsubst-style), leaving nginx's own `$variables` alone.

    An unknown placeholder raises KeyError instead of reaching nginx.
    """
    return _PLACEHOLDER.sub(lambda match: str(values[match[1]]), text)


def ms(seconds: float, floor_s: float = 0.001) -> str:
    """A duration in nginx's millisecond notation, so scaled timeouts keep their precision."""
    return f"{round(max(seconds, floor_s) * 1000)}ms"


def scale_durations(conf: str, scale: float) -> str:
    """Multiply the value of every duration directive by `scale` (written in ms)."""

    def scaled(match: re.Match) -> str:
        seconds = int(match["value"]) * _UNITS[match["unit"] or ""] * scale
        return f"{match['indent']}{match['name']} {ms(seconds, FLOOR_S)};"

    return _DURATION.sub(scaled, conf)


def render_nginx(root: Path, scale: float, values: dict[str, Any]) -> str:
    """The production server block for the local stack: placeholders filled, durations scaled."""
    return scale_durations(fill((root / NGINX_TEMPLATE).read_text(), values), scale)


def render_layer(template: Path, root: Path, values: dict[str, Any]) -> str:
    return fill((root / template).read_text(), values)


def layer_timeouts(root: Path, scale: float) -> dict[str, str]:
    """The edge read timeout and the LB idle timeout from the production Terraform, scaled."""
    chain = read_chain(root)
    return {
        "EDGE_READ_TIMEOUT": ms(chain.edge_read_timeout.seconds * scale, FLOOR_S),
        "LB_IDLE_TIMEOUT": ms(chain.lb_idle_timeout.seconds * scale, FLOOR_S),
        "CONNECT_TIMEOUT": ms(CONNECT_TIMEOUT_S * scale, FLOOR_S),
    }


def layer_of(status: int, headers) -> str:
    """Which hop answered: "ok", or the layer that cut the request ("app", "nginx", "lb", "edge").

    Proxies mark the errors they make themselves with `X-Dlkit-Layer`; a 5xx without it came from
    the app (past its own REQUEST_TIMEOUT_MS it answers 504 with the `request-timeout` problem type).
    """
    if status < 500:
        return "ok" if status < 400 else "client-error"
    return headers.get("X-Dlkit-Layer") or "app"
