"""The problem: naive clients calling the legacy synchronous `POST /v1/download/start`.

Each user asks for one file and waits for it, with a client timeout of its own, like a script
using an HTTP library. Every request is recorded under its outcome, so the stats table reads as
the answer to "who cut my download?":

    POST  start [200]            the download arrived
    POST  start [504 app]        the app's REQUEST_TIMEOUT_MS fired (30 s in production)
    POST  start [504 nginx]      a proxy layer cut it (X-Dlkit-Layer: nginx, lb, edge -> 524)
    POST  start [client timeout] this client gave up first
    CHAIN overhead               per arrived download: the client's time minus the app's own

Anything but 200 is a failure. With downloads uniform on 10-120 s and the tightest timeout T,
the cut share is (120 - T) / 110: 81.8 % with the shipped configs (the app at 30 s).

    locust -f loadtests/sync.py --host http://127.0.0.1:18080 --headless -u 20 -r 10 -t 30s --time-scale 0.02
"""

from __future__ import annotations

from common import auth_headers, available_file_id, classify, explain, scaled
from locust import HttpUser, task

from dlkit.settings import LONGEST_DOWNLOAD_S

# The naive client's own patience, in real seconds. Above the tightest layer of the shipped chain
# (the app's 30 s), so on those configs the proxies decide; below the longest download (120 s),
# so when every proxy is raised (the tempting non-fix) the client's own timeout becomes the cut,
# and shows here as `client timeout`. 100 s is also Cloudflare's long-time default read timeout.
# `dlkit demo` lifts it (--client-timeout) when it makes each proxy layer the tightest in turn.
CLIENT_TIMEOUT_S = 100
assert CLIENT_TIMEOUT_S < LONGEST_DOWNLOAD_S


def client_timeout_s(environment) -> float:
    """This client's own patience in real seconds: --client-timeout, else CLIENT_TIMEOUT_S."""
    return getattr(environment.parsed_options, "client_timeout", None) or CLIENT_TIMEOUT_S


def start(user: HttpUser, label: str = "start") -> str:
    """One synchronous download; returns its outcome (see common.classify)."""
    # HttpUser has no timeout unless given one: a naive client that sets none waits forever.
    with user.client.post(
        "/v1/download/start",
        json={"file_id": available_file_id()},
        headers=auth_headers(user.environment),
        catch_response=True,
        timeout=scaled(user.environment, client_timeout_s(user.environment)),
    ) as response:
        outcome = classify(response)
        # One stats row per outcome: the row name is what the table groups by.
        response.request_meta["name"] = f"{label} [{outcome}]"
        if outcome == "200":
            response.success()
            overhead(user, response)
        else:
            response.failure(explain(outcome))
    return outcome


def overhead(user: HttpUser, response) -> None:
    """What the chain adds to a download that arrived: the client's time minus the app's own
    (`processingTimeMs`: the work). It does not shrink with the time scale, so at 0.02 every 10 ms
    of it counts as 0.5 s of 'download' against each proxy's timeout: `dlkit demo` reads it."""
    processing_ms = response.json().get("processingTimeMs")
    if isinstance(processing_ms, (int, float)):
        user.environment.events.request.fire(
            request_type="CHAIN",
            name="overhead",
            response_time=max(0.0, response.request_meta["response_time"] - processing_ms),
            response_length=0,
            exception=None,
            context={},
        )


class SyncUser(HttpUser):
    """Downloads one file after another, with no pause: the worst case, and many samples."""

    @task
    def download(self) -> None:
        start(self)
