"""The emulated chain (edge -> lb -> nginx -> gunicorn -> app) cuts synchronous requests where the
production files say it will, with the share (120 - T) / 110 predicts; polling is never cut.

The chain's stack runs every synchronous download for the full 120 s (2.4 s at TIME_SCALE 0.02),
and each test rewrites copies of the production files so that one layer is the tightest.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from dlkit.kit import ROOT
from dlkit.kit.chain import config_with_timeouts, layer_timeouts
from dlkit.kit.timeouts import nginx_seconds
from dlkit.layers import layer_of

from .conftest import start_stack
from .support import available_ids, initiate, poll

pytestmark = pytest.mark.stack  # some tests start stacks of their own


def config_copy(root: Path, edge: int, lb: int, nginx_start: int) -> Path:
    """Copies of the production files with the edge read timeout, the LB idle timeout and nginx's
    read timeout for the legacy `start` route set to these (real, unscaled) seconds."""
    return config_with_timeouts(root, {"edge": edge, "lb": lb, "nginx": nginx_start})


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A stack without workers (the synchronous route needs none) whose downloads all take 120 s."""
    stack = start_stack(
        tmp_path_factory.mktemp("chain-stack"),
        workers=0,
        DOWNLOAD_DELAY_MIN_MS="120000",
        DOWNLOAD_DELAY_MAX_MS="120000",
    )
    yield stack
    stack.stop()


def start_once(entry: str) -> tuple[int, str]:
    with httpx.Client(base_url=entry, timeout=30) as client:
        r = client.post(
            "/v1/download/start", json={"file_id": 70000}, headers={"Authorization": "Bearer key-alice-0123456789"}
        )
    return r.status_code, layer_of(r.status_code, r.headers)


# (edge, lb, nginx start route, app REQUEST_TIMEOUT) in real seconds -> what the client sees for
# a 120 s download: the tightest layer cuts it, or it completes when every layer waits longer.
CASES = {
    "app": ((100, 90, 110, 30), (504, "app")),
    "nginx": ((100, 90, 50, 115), (504, "nginx")),
    "lb": ((100, 50, 110, 115), (504, "lb")),
    "edge": ((50, 105, 110, 115), (524, "edge")),
    "none": ((150, 150, 150, 150), (200, "ok")),
}


@pytest.mark.parametrize("tightest", CASES)
def test_a_synchronous_download_ends_with_the_tightest_layers_answer(tightest, chain, tmp_path):
    (edge, lb, nginx_start, app), expected = CASES[tightest]
    chain.reconfigure(config_copy(tmp_path, edge, lb, nginx_start), env={"REQUEST_TIMEOUT_MS": str(app * 1000)})
    assert start_once(chain.entry) == expected


SYNC_WORKER = {"REQUEST_TIMEOUT_MS": "150000", "GUNICORN_WORKER_CLASS": "sync", "WEB_CONCURRENCY": "1"}
GTHREAD_WORKERS = {"GUNICORN_WORKER_CLASS": "gthread", "WEB_CONCURRENCY": "2", "GUNICORN_TIMEOUT_S": "30"}


def test_a_killed_gunicorn_worker_is_a_502_at_nginx(chain, tmp_path):
    """The worker dies mid-request: nginx sees the connection close without a response -> 502,
    which the LB and the edge pass on unchanged."""
    chain.reconfigure(config_copy(tmp_path, 150, 150, 150), env={**SYNC_WORKER, "GUNICORN_TIMEOUT_S": "30"})
    try:
        (worker,) = psutil.Process(chain.components["api"].pid).children()
        with ThreadPoolExecutor(max_workers=1) as pool:
            answer = pool.submit(start_once, chain.entry)
            # The legacy handler starts its work thread when the request arrives: that is the
            # moment the worker is busy (bounded wait; a 2.4 s request leaves plenty of time).
            deadline = time.monotonic() + 2
            while worker.num_threads() < 2:
                assert time.monotonic() < deadline and not answer.done(), "the request never reached the worker"
                time.sleep(0.01)
            worker.kill()
            assert answer.result() == (502, "nginx")
    finally:
        chain.reconfigure(env=GTHREAD_WORKERS)


def test_a_timed_out_gunicorn_sync_worker_is_aborted_with_a_500(chain, tmp_path):
    """gunicorn's master aborts a sync worker silent past `timeout` (whole seconds, not scaled:
    1 s here against a 2.4 s download). gunicorn 27 sends SIGABRT first, and the dying worker
    still writes its own plain 500 (older gunicorn killed it outright: 502 at nginx). Either way
    the download is lost, which is why the kit runs gthread workers."""
    chain.reconfigure(config_copy(tmp_path, 150, 150, 150), env={**SYNC_WORKER, "GUNICORN_TIMEOUT_S": "1"})
    try:
        with httpx.Client(base_url=chain.entry, timeout=30) as client:
            r = client.post(
                "/v1/download/start", json={"file_id": 70000}, headers={"Authorization": "Bearer key-alice-0123456789"}
            )
        assert r.status_code == 500 and "X-Dlkit-Layer" not in r.headers
        assert "Internal Server Error" in r.text  # gunicorn's page, not the app's problem document
    finally:
        chain.reconfigure(env=GTHREAD_WORKERS)


@pytest.mark.parametrize("timeout_s", [30, 60])
def test_the_share_cut_matches_the_formula(timeout_s, tmp_path_factory):
    """Delays uniform on [10, 120] s against a tightest timeout T: (120 - T) / 110 are cut."""
    stack = start_stack(
        tmp_path_factory.mktemp(f"share-{timeout_s}"),
        workers=0,
        REQUEST_TIMEOUT_MS=str(timeout_s * 1000),
        RATE_LIMIT_MAX_REQUESTS="100000",
    )
    try:
        # Lift nginx, the LB and the edge out of the way so that only the app's timer cuts. With the
        # production files (60 s above a 30 s app) the margin is 0.6 s at TIME_SCALE 0.02, and a request
        # queued that long for a gunicorn thread on a loaded machine is cut by the LB first (once in CI):
        # the app's timer starts in the handler, the proxies' when the request is sent.
        stack.reconfigure(config_copy(tmp_path_factory.mktemp("cfg"), 150, 150, 150))
        requests = 1000
        with ThreadPoolExecutor(max_workers=24) as pool:
            outcomes = Counter(pool.map(lambda _: start_once(stack.entry), range(requests)))
    finally:
        stack.stop()
    assert set(outcomes) <= {(200, "ok"), (504, "app")}, outcomes
    measured = outcomes[(504, "app")] / requests
    expected = (120 - timeout_s) / 110
    print(f"T={timeout_s} s: cut {measured:.1%}, formula {expected:.1%}")
    assert abs(measured - expected) < 0.05, f"cut {measured:.1%}, formula {expected:.1%} at T={timeout_s} s"


def test_polling_through_the_chain_sees_no_5xx(stack):
    """The fix: the same chain, the same 10-120 s work, and not one 5xx."""
    statuses: Counter = Counter()

    def one_download(n: int) -> str:
        with httpx.Client(
            base_url=stack.entry, timeout=10, headers={"Authorization": "Bearer key-alice-0123456789"}
        ) as client:
            r = initiate(client, available_ids(3, start=95_000 + 100 * n))
            statuses[r.status_code] += 1
            final = poll(client, r.json()["jobId"])[-1]
            download = client.get(f"/v1/download/{final['jobId']}")
            statuses[download.status_code] += 1
            return final["status"]

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(one_download, range(12)))
    assert results == ["completed"] * 12
    assert not [code for code in statuses if code >= 500], statuses


def _counters(stack, layer: str) -> dict[tuple[str, str], float]:
    """(route, status) -> count, as the layer's own /metrics (njs) reports it."""
    text = httpx.get(f"http://127.0.0.1:{stack.ports[f'{layer}_metrics']}/metrics").text
    found = re.findall(r'dlkit_proxy_requests_total\{layer="%s",route="(\w+)",status="(\d+)"\} (\d+)' % layer, text)
    return {(route, status): float(count) for route, status, count in found}


def test_each_layer_counts_what_it_answered(chain, tmp_path):
    """The edge cut the request (524); the LB and nginx behind it saw their client leave (499)."""
    chain.reconfigure(config_copy(tmp_path, 50, 105, 110), env={"REQUEST_TIMEOUT_MS": "115000"})
    assert start_once(chain.entry) == (524, "edge")
    assert _counters(chain, "edge").get(("start", "524")) == 1, httpx.get(
        f"http://127.0.0.1:{chain.ports['edge_metrics']}/metrics"
    ).text
    assert _counters(chain, "lb")[("start", "499")] == 1
    assert _counters(chain, "nginx")[("start", "499")] == 1


@pytest.mark.parametrize("scale", [0.02, 0.1, 1.0])
def test_the_edge_drops_an_idle_connection_to_the_lb_before_the_lb_does(scale):
    """Else the edge may send a request on a connection the LB is closing: a rare 502 (one in 1000
    requests of the test above, once, before the edge's keep-alive was set)."""
    values = layer_timeouts(ROOT, scale)
    assert nginx_seconds(values["EDGE_KEEPALIVE_TIMEOUT"]) < nginx_seconds(values["LB_IDLE_TIMEOUT"])
    assert "keepalive_timeout ${EDGE_KEEPALIVE_TIMEOUT};" in (ROOT / "proxy/emulation/edge.conf.template").read_text()
