"""What the dlkit locustfiles share: options, auth, client timeouts, and who cut a request.

Every locustfile here runs on its own with plain Locust, against any base URL:

    locust -f loadtests/sync.py --host http://127.0.0.1:18080 --headless -u 20 -r 10 -t 30s

Options (command line, or the environment variable named in brackets):
    --time-scale X    [TIME_SCALE]      the stack's clock scale: client timeouts and think times follow it
    --api-key KEY     [DLKIT_API_KEY]   sent as `Authorization: Bearer KEY` when the stack has API_KEYS

The stack's per-client rate limit (RATE_LIMIT_MAX_REQUESTS per RATE_LIMIT_WINDOW_MS, 600 a minute
by default) counts every Locust user as one client (one address, or one API key): start the stack
you load with a high limit, e.g. `RATE_LIMIT_MAX_REQUESTS=1000000 dlkit up`, or you measure 429s.
"""

from __future__ import annotations

import random
import time

import requests
from locust import events

from dlkit.files import is_available
from dlkit.layers import layer_of
from dlkit.settings import FILE_ID_MAX, FILE_ID_MIN

# Real (unscaled) seconds; every duration below is multiplied by --time-scale.
# Calls that do no work (initiate, status, the download redirect) answer in milliseconds at any
# scale; their timeout must not shrink with the clock, or a busy CI machine would time them out.
API_CALL_TIMEOUT_S = 10


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument(
        "--time-scale",
        type=float,
        env_var="TIME_SCALE",
        default=1.0,
        help="the stack's TIME_SCALE: client timeouts and think times follow it (default 1.0)",
    )
    parser.add_argument(
        "--api-key",
        env_var="DLKIT_API_KEY",
        default="",
        help="API key sent as a Bearer token, when the stack runs with API_KEYS",
    )
    parser.add_argument(
        "--client-timeout",
        type=float,
        default=None,
        help="sync.py: the naive client's own timeout in real seconds (default 100); "
        "above 120 no download is cut by the client itself",
    )


def report(user, request_type: str, name: str, started: float, length: int = 0, error: str | None = None) -> None:
    """A custom Locust request (a whole download, or a download a user wanted) timed from `started`."""
    user.environment.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=(time.monotonic() - started) * 1000,
        response_length=length,
        exception=RuntimeError(error) if error else None,
        context={},
    )


def time_scale(environment) -> float:
    # run_single_user and library use may have no parsed options: then real speed.
    options = environment.parsed_options
    return float(getattr(options, "time_scale", 1.0) or 1.0)


def auth_headers(environment) -> dict[str, str]:
    key = getattr(environment.parsed_options, "api_key", "") or ""
    return {"Authorization": f"Bearer {key}"} if key else {}


def scaled(environment, seconds: float) -> float:
    return seconds * time_scale(environment)


def available_file_id() -> int:
    """A random file id the service has (file_id % 7 == 0)."""
    return random.randrange(FILE_ID_MIN + (-FILE_ID_MIN) % 7, FILE_ID_MAX + 1, 7)


def unavailable_file_id() -> int:
    while True:
        file_id = random.randint(FILE_ID_MIN, FILE_ID_MAX)
        if not is_available(file_id):
            return file_id


def classify(response) -> str:
    """Outcome label of one response: "200", "504 app", "524 edge", "client timeout", ...

    The layer comes from what it sent (dlkit.layers.layer_of): the local proxies' X-Dlkit-Layer,
    the app's problem JSON, Cloudflare's 52x, an ALB's or nginx's own Server header. A request
    that never got a response (Locust's status 0) is a client timeout or a connection error.
    """
    status = response.status_code
    if not status:
        if isinstance(getattr(response, "error", None), requests.exceptions.Timeout):
            return "client timeout"
        return "connection error"
    layer = layer_of(status, response.headers)
    return str(status) if layer in ("ok", "client-error") else f"{status} {layer}"


# What each outcome means, for Locust's failure table.
_CUT_BY = {
    "app": "the app's own REQUEST_TIMEOUT_MS",
    "nginx": "nginx (proxy_read_timeout, or gunicorn gone)",
    "lb": "the load balancer (idle timeout)",
    "edge": "the edge (Cloudflare-like read timeout)",
}


def explain(outcome: str) -> str:
    """ "504 app" -> "504: cut by the app's own REQUEST_TIMEOUT_MS", for failure reports."""
    status, _, layer = outcome.partition(" ")
    if status.isdigit() and layer in _CUT_BY:
        return f"{status}: cut by {_CUT_BY[layer]}"
    if outcome == "client timeout":
        return "no answer within this client's own timeout"
    return outcome


def is_server_error(outcome: str) -> bool:
    """What makes a naive client retry: any 5xx, or no answer at all."""
    return outcome[0] == "5" or outcome in ("client timeout", "connection error")
