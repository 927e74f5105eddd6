"""The local request chain, rendered from the production files with every duration scaled.

    client -> edge (Cloudflare-like) -> lb (ALB-like) -> nginx (proxy/nginx) -> gunicorn -> app

The production files hold real values: proxy/nginx/dlkit.conf.template, the Cloudflare proxy read
timeout (proxy/cloudflare) and the ALB idle timeout (proxy/alb), read by dlkit/kit/timeouts.py, the
same reader `dlkit audit` uses. The local stack renders copies in which every duration is multiplied
by TIME_SCALE, so at 0.02 the whole chain keeps its proportions and runs in seconds.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from dlkit.settings import Settings

from .timeouts import (
    ALB_VARIABLES,
    CLOUDFLARE_VARIABLES,
    FILES,
    LEGACY_ROUTE,
    NGINX_CONF,
    ROOT,
    nginx_seconds,
    read_chain,
)

# The production server block is the file the audit reads (dlkit/kit/timeouts.py).
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
# Durations no longer than the shortest simulated work (10 s) guard request handling (a status poll's
# 5 s, a client's 10 s to send its headers): a request's real cost does not shrink with TIME_SCALE, so
# they keep their real value, or a loaded CI machine would see 504s the production chain never would.
# Longer ones stand for the work (the legacy route, the LB's idle timeout, the edge) and are scaled,
# never below FLOOR_S.
HANDLING_MAX_S = Settings.model_fields["DOWNLOAD_DELAY_MIN_MS"].default / 1000
FLOOR_S = 1.0


def local_seconds(real_s: float, scale: float) -> float:
    """A proxy duration in the local chain: a handling guard as it is, a work-sized one scaled."""
    return real_s if real_s <= HANDLING_MAX_S else max(real_s * scale, FLOOR_S)


CONNECT_TIMEOUT_S = 5
# The edge keeps an idle connection to the LB for this share of the LB's idle timeout (edge.conf.template).
EDGE_KEEPALIVE_SHARE = 0.8

_DURATION = re.compile(
    r"^(?P<indent>\s*)(?P<name>%s)\s+(?P<value>[0-9a-zA-Z]+(?:\s+[0-9a-zA-Z]+)*)\s*;" % "|".join(DURATIONS),
    re.MULTILINE,
)
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
    """Every duration directive's value as the local chain runs it (`local_seconds`, written in ms)."""

    def scaled(match: re.Match) -> str:
        # The audit's own parser (dlkit/kit/timeouts.py): compound values like 1m30s included, and each
        # of keepalive_timeout's two values (idle timeout, Keep-Alive header).
        # The second is read in whole seconds by nginx (no "ms").
        first, *header = (local_seconds(nginx_seconds(value), scale) for value in match["value"].split())
        values = [ms(first), *(f"{max(1, round(seconds))}s" for seconds in header)]
        return f"{match['indent']}{match['name']} {' '.join(values)};"

    return _DURATION.sub(scaled, conf)


def render_nginx(root: Path, scale: float, values: dict[str, Any]) -> str:
    """The production server block for the local stack: placeholders filled, durations scaled."""
    return scale_durations(fill((root / NGINX_TEMPLATE).read_text(), values), scale)


def render_layer(template: Path, root: Path, values: dict[str, Any]) -> str:
    return fill((root / template).read_text(), values)


def layer_timeouts(root: Path, scale: float) -> dict[str, str]:
    """The edge read timeout and the LB idle timeout from the production Terraform, scaled, and the
    edge's keep-alive to the LB under the latter."""
    chain = read_chain(root)
    return {
        "EDGE_READ_TIMEOUT": ms(local_seconds(chain.edge_read_timeout.seconds, scale)),
        "LB_IDLE_TIMEOUT": ms(local_seconds(chain.lb_idle_timeout.seconds, scale)),
        "EDGE_KEEPALIVE_TIMEOUT": ms(EDGE_KEEPALIVE_SHARE * local_seconds(chain.lb_idle_timeout.seconds, scale)),
        "CONNECT_TIMEOUT": ms(local_seconds(CONNECT_TIMEOUT_S, scale)),
    }


def config_with_timeouts(dest: Path, timeouts: dict[str, float], root: Path = ROOT) -> Path:
    """A copy of the chain's files under `dest` with the legacy route's timeout of some proxy layers
    changed: `timeouts` maps "nginx", "lb" or "edge" to real seconds. Returns `dest`.

    Stack(config_root=dest) renders the local chain from it and read_chain(dest) reads it, so what
    the chain runs and what the audit or the demo expect come from the same files. The demo and the
    tests use it to make one layer the tightest; the production files are never touched.
    """
    shutil.copytree(root / "proxy", dest / "proxy", dirs_exist_ok=True)
    for relative in FILES:
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / relative, dest / relative)
    places = {
        "edge": (CLOUDFLARE_VARIABLES, r'(variable "proxy_read_timeout"\s*\{[^}]*?default\s*=\s*)\d+', ""),
        "lb": (ALB_VARIABLES, r'(variable "idle_timeout"\s*\{[^}]*?default\s*=\s*)\d+', ""),
        "nginx": (
            NGINX_CONF,
            r"(location %s \{[^}]*?proxy_read_timeout )[0-9a-zA-Z]+(?=;)" % re.escape(LEGACY_ROUTE),
            "s",
        ),
    }
    for layer, seconds in timeouts.items():
        relative, pattern, unit = places[layer]
        path = dest / relative
        value = f"{round(seconds)}{unit}"
        text, count = re.subn(pattern, lambda match, value=value: match[1] + value, path.read_text(), flags=re.DOTALL)
        if count != 1:
            raise ValueError(f"{relative}: cannot find the {layer} timeout of the legacy route")
        path.write_text(text)
    return dest
