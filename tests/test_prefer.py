"""`Prefer: respond-async, wait=N` on initiate (RFC 7240): the parsing, the cap against the chain's files
(the audit), and the behaviour through the whole emulated chain (edge -> LB -> nginx -> gunicorn).

The stack here runs at TIME_SCALE 0.2 with the simulated delay off, so a one-file job ends in
milliseconds and the cap is the production one (4 s, under nginx's 5 s on initiate, which the local
chain keeps unscaled; the LB's 60 s is 12 s here). A job that cannot end is one whose worker is stopped.
One gunicorn process with PREFER_MAX_WAITERS=1 makes the waiter bound observable.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from redis import Redis

from app.routes.jobs import parse_prefer, wait_preference
from dlkit.client import DownloadClient
from dlkit.kit.audit import audit
from dlkit.kit.chain import local_seconds
from dlkit.kit.stack import Stack, free_base_port
from dlkit.kit.timeouts import FILES, INITIATE_ROUTE, NGINX_CONF, ROOT, SETTINGS, read_chain
from dlkit.settings import Settings

from .conftest import STACK_ENV
from .support import API_KEYS, TERMINAL, available_ids, client_for, verify_zip

SCALE = 0.2
CAP_S = Settings().PREFER_WAIT_MAX_S
# How far past the wait an answer may come on a loaded 2-core machine: generous, it only bounds "returned".
SLACK_S = 3.0


# Parsing: pure logic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines,expected",
    [
        (["respond-async, wait=5"], {"respond-async": "", "wait": "5"}),
        (["Respond-Async, WAIT = 5"], {"respond-async": "", "wait": "5"}),
        (["wait=5; foo=bar, respond-async"], {"wait": "5", "respond-async": ""}),
        (['wait="5"'], {"wait": "5"}),
        (["wait=5, wait=1"], {"wait": "5"}),  # only the first instance counts
        (["respond-async", "wait=2", "wait=9"], {"respond-async": "", "wait": "2"}),  # several header lines
        (['handling=lenient, x="a,b", wait=10'], {"handling": "lenient", "x": "a,b", "wait": "10"}),
        ([",, wait=3 ,"], {"wait": "3"}),
        ([""], {}),
        ([], {}),
    ],
)
def test_prefer_is_parsed_as_rfc_7240_says(lines, expected):
    assert parse_prefer(lines) == expected


@pytest.mark.parametrize(
    "header,seconds",
    [
        ("wait=4", 4),
        ("wait=0", 0),
        ("wait=007", 7),
        ("wait=99999999999999999999", 2**31),  # past 2^31 is 2^31 (RFC 9111 delta-seconds)
        ("wait=abc", None),
        ("wait=-1", None),
        ("wait=1.5", None),
        ("wait", None),
        ("wait=", None),
        ("respond-async", None),
        ("\u00e9\u00e8=\u00e0, \x7f", None),
    ],
)
def test_a_malformed_wait_is_ignored(header, seconds):
    assert wait_preference(parse_prefer([header])) == seconds


# The cap against the chain's files ------------------------------------------------------------


def test_the_cap_is_below_every_timeout_on_initiates_path_in_production_and_in_the_local_chain():
    chain = read_chain(ROOT)
    path = [
        chain.nginx.location(INITIATE_ROUTE).proxy_read_timeout.seconds,
        chain.lb_idle_timeout.seconds,
        chain.edge_read_timeout.seconds,
    ]
    assert chain.app.PREFER_WAIT_MAX_S.seconds == CAP_S < min(path)
    # The local chain scales the LB and the edge (not nginx's 5 s): the app's cap follows TIME_SCALE there.
    for scale in (0.02, 0.05, SCALE, 0.5, 1.0):
        cap = Settings(TIME_SCALE=scale).prefer_wait_max_s
        assert 0 < cap <= CAP_S
        assert cap < min(local_seconds(seconds, scale) for seconds in path), scale
    assert Settings(TIME_SCALE=1.0).prefer_wait_max_s == CAP_S


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A copy of the files the audit reads, to break one."""
    for relative in FILES:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, tmp_path / relative)
    return tmp_path


def replace_once(path: Path, old: str, new: str) -> int:
    """Replace the one `old` in the file; return its 1-based line."""
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    return text.count("\n", 0, text.index(old)) + 1


def prefer_findings(root: Path) -> list:
    return [f for f in audit(read_chain(root)) if f.check == "prefer-wait"]


def test_the_shipped_files_keep_the_cap_below_the_chain(root):
    assert prefer_findings(root) == []


def test_a_tighter_nginx_initiate_timeout_fails_the_audit(root):
    nginx = root / NGINX_CONF
    anchor = "location = /v1/download/initiate {"
    head, tail = nginx.read_text().split(anchor)
    nginx.write_text(head + anchor + tail.replace("proxy_read_timeout 5s;", "proxy_read_timeout 4s;", 1))
    line = nginx.read_text().count("\n", 0, nginx.read_text().index("proxy_read_timeout 4s;")) + 1

    [finding] = prefer_findings(root)
    assert finding.severity == "error"
    assert "nginx proxy_read_timeout of location = /v1/download/initiate 4 s <= PREFER_WAIT_MAX_S 4 s" in (
        finding.message
    )
    assert finding.locations[0] == f"{NGINX_CONF}:{line}"
    assert finding.locations[1].startswith(f"{SETTINGS}:")


def test_a_cap_raised_past_nginx_fails_the_audit(root):
    line = replace_once(root / SETTINGS, "PREFER_WAIT_MAX_S: float = Field(4,", "PREFER_WAIT_MAX_S: float = Field(8,")

    [finding] = prefer_findings(root)
    assert "5 s <= PREFER_WAIT_MAX_S 8 s" in finding.message
    assert finding.locations[1] == f"{SETTINGS}:{line}"


# Through the emulated chain -------------------------------------------------------------------


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Iterator[Stack]:
    env = {
        **STACK_ENV,
        "DOWNLOAD_DELAY_ENABLED": "false",
        "WEB_CONCURRENCY": "1",
        "PREFER_MAX_WAITERS": "1",
    }
    stack = Stack(
        home=tmp_path_factory.mktemp("prefer-stack"),
        base_port=free_base_port(),
        time_scale=SCALE,
        workers=1,
        env=env,
        prometheus=False,
    )
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture
def client(kit) -> Iterator[httpx.Client]:
    with client_for(kit, "alice") as client:
        yield client


@pytest.fixture
def no_worker(kit) -> Iterator[None]:
    """Jobs stay queued: none ends within any wait."""
    kit.stop_component("worker-1")
    yield
    kit.start_component("worker-1")


def initiate(client: httpx.Client, ids: list[int], prefer: str | None = None, key: str | None = None) -> httpx.Response:
    headers = {"Prefer": prefer} if prefer is not None else {}
    if key:
        headers["Idempotency-Key"] = key
    return client.post("/v1/download/initiate", json={"file_ids": ids}, headers=headers, timeout=30)


def timed(call) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def waiting_requests(redis: Redis) -> int:
    """Requests blocked in JobStore.wait_terminal: clients of this Valkey blocked in XREAD."""
    return sum(1 for c in redis.client_list() if c["cmd"] == "xread" and "b" in c["flags"])


def until_waiting(redis: Redis, count: int, within_s: float = 10) -> None:
    """Until `count` requests are blocked on their job's event log: the API's own readiness signal."""
    deadline = time.monotonic() + within_s
    while waiting_requests(redis) < count:
        assert time.monotonic() < deadline, "no request started waiting"
        time.sleep(0.02)


@pytest.fixture
def redis(kit) -> Iterator[Redis]:
    client = Redis.from_url(kit.redis_url)
    yield client
    client.close()


def assert_202_as_today(r: httpx.Response) -> None:
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) == {"jobId", "status", "totalFileIds", "statusUrl", "createdAt"}
    assert r.headers["Location"] == body["statusUrl"] == f"/v1/download/status/{body['jobId']}"
    assert ("Retry-After" in r.headers) is (body["status"] not in TERMINAL)  # a replay of a finished job has none
    assert "RateLimit-Remaining" in r.headers
    assert "Content-Location" not in r.headers
    assert "Prefer" in r.headers["Vary"]


@pytest.mark.stack
def test_a_job_that_ends_within_the_wait_is_answered_with_its_final_status(kit, client):
    ids = available_ids(1, start=71_000)
    key = str(uuid.uuid4())

    r = initiate(client, ids, "respond-async, wait=4", key)

    assert r.status_code == 200, r.text
    doc = r.json()
    location = f"/v1/download/status/{doc['jobId']}"
    assert doc["status"] == "completed" and doc["processedFiles"] == 1 and doc["progress"] == 100
    assert r.headers["Content-Location"] == r.headers["Location"] == location
    assert r.headers["Preference-Applied"] == "wait=4"
    assert "Prefer" in r.headers["Vary"]
    assert "Retry-After" not in r.headers
    assert all(name in r.headers for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"))
    # The status route's document: same fields, same final state.
    polled = client.get(location).json()
    assert set(doc) == set(polled)
    assert {k: doc[k] for k in ("status", "artifact", "updatedAt")} == {
        k: polled[k] for k in ("status", "artifact", "updatedAt")
    }
    verify_zip(httpx.get(doc["downloadUrl"], timeout=10).raise_for_status().content, ids)

    # An idempotent replay behaves the same: with the preference, the final status at once; without, 202.
    again = initiate(client, ids, "respond-async, wait=4", key)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["jobId"] == doc["jobId"] and again.json()["status"] == "completed"
    plain = initiate(client, ids, None, key)
    assert_202_as_today(plain)
    assert "Preference-Applied" not in plain.headers


@pytest.mark.stack
@pytest.mark.parametrize(
    "prefer,applied",
    [
        (None, None),
        ("respond-async", "respond-async"),
        ("wait=abc", None),
        ("respond-async, wait=-1", "respond-async"),
        ("wait=1.5", None),
        ("handling=strict, return=minimal", None),
        ("wait=0", None),
        (",;=, ;", None),
    ],
)
def test_without_a_valid_wait_initiate_answers_202_as_today(kit, client, prefer, applied):
    r, took = timed(lambda: initiate(client, available_ids(1, start=72_000), prefer))

    assert_202_as_today(r)
    assert r.headers.get("Preference-Applied") == applied
    assert took < SLACK_S


def test_a_server_of_one_request_per_process_never_waits(make_app):
    """gunicorn's sync workers (GUNICORN_WORKER_CLASS=sync, the failure mode's demo) serve one request per
    process: a wait would hold the whole process, so there the preference is never applied."""
    queue_name = f"test-prefer-sync-{uuid.uuid4().hex[:8]}"  # no worker serves it: the jobs stay queued
    app = make_app(QUEUE_NAME=queue_name, RATE_LIMIT_MAX_REQUESTS=1000, RATE_LIMIT_WINDOW_MS=3_600_000)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {API_KEYS['bob']}", "Prefer": "respond-async, wait=2"}
    ids = []
    try:
        for start, multithread in ((74_000, False), (74_100, True)):
            r = client.post(
                "/v1/download/initiate",
                json={"file_ids": available_ids(1, start=start)},
                headers=headers,
                environ_overrides={"wsgi.multithread": multithread},
            )
            assert r.status_code == 202, r.text
            ids.append(r.json["jobId"])
            wait_s = min(2, app.extensions["dlkit"].settings.prefer_wait_max_s)
            waited = f"respond-async, wait={wait_s:g}"
            assert r.headers["Preference-Applied"] == (waited if multithread else "respond-async")
    finally:
        for job_id in ids:
            client.post(f"/v1/download/cancel/{job_id}", headers=headers)


@pytest.mark.stack
def test_a_job_that_does_not_end_gets_202_after_the_wait_and_a_wait_past_the_cap_is_cut_to_it(
    kit, client, no_worker, redis
):
    r, took = timed(lambda: initiate(client, available_ids(1, start=73_000), "respond-async, wait=2"))
    assert_202_as_today(r)
    assert r.json()["status"] == "queued"
    assert r.headers["Preference-Applied"] == "respond-async, wait=2"
    assert 2 <= took < 2 + SLACK_S

    # 100 s asked, CAP_S waited: through the edge, the LB and nginx (5 s), no layer answers first.
    r, took = timed(lambda: initiate(client, available_ids(1, start=73_100), "respond-async, wait=100"))
    assert_202_as_today(r)
    assert r.headers["Preference-Applied"] == f"respond-async, wait={CAP_S:g}"
    assert CAP_S <= took < CAP_S + SLACK_S


@pytest.mark.stack
def test_a_wait_ends_as_soon_as_the_job_does_cancelled_included(kit, client, no_worker, redis):
    ids, key = available_ids(2, start=74_000), str(uuid.uuid4())
    job_id = initiate(client, ids, None, key).json()["jobId"]
    with ThreadPoolExecutor(1) as pool:
        # The same request again (an idempotent replay) with the preference: it waits on the queued job.
        waiting: Future = pool.submit(timed, lambda: initiate(client, ids, "respond-async, wait=4", key))
        until_waiting(redis, 1)
        assert client.post(f"/v1/download/cancel/{job_id}").status_code == 200
        r, took = waiting.result()

    # 200 with the cancelled document (the status route says 410: here the request itself succeeded).
    assert r.status_code == 200, r.text
    assert r.json()["jobId"] == job_id and r.json()["status"] == "cancelled"
    assert r.headers["Content-Location"] == f"/v1/download/status/{job_id}"
    assert took < CAP_S  # woken by the change, not by the end of the wait


@pytest.mark.stack
def test_past_the_waiter_bound_initiate_answers_202_at_once(kit, client, no_worker, redis):
    with ThreadPoolExecutor(1) as pool:
        first: Future = pool.submit(
            timed, lambda: initiate(client, available_ids(1, start=75_000), "respond-async, wait=4")
        )
        until_waiting(redis, 1)  # PREFER_MAX_WAITERS=1 in the one API process: the slot is taken
        r, took = timed(lambda: initiate(client, available_ids(1, start=75_100), "respond-async, wait=4"))
        first_response, first_took = first.result()

    assert_202_as_today(r)
    assert r.headers["Preference-Applied"] == "respond-async"  # wait not applied
    assert took < CAP_S
    assert_202_as_today(first_response)
    assert first_response.headers["Preference-Applied"] == f"respond-async, wait={CAP_S:g}"
    assert first_took >= CAP_S


@pytest.mark.stack
def test_at_time_scale_002_the_wait_stays_under_the_scaled_load_balancer(slow):
    # The LB emulation's idle timeout is 1.2 s at this scale, every job takes 2.4 s: the wait must end
    # (at the scaled REQUEST_TIMEOUT_MS, 0.6 s) with a 202 from the API, not a 504 from the LB.
    cap = slow.settings.prefer_wait_max_s
    assert cap == pytest.approx(0.6)
    with slow.client() as client:
        r, took = timed(lambda: initiate(client, available_ids(1, start=76_000), "respond-async, wait=100"))
        assert r.status_code == 202, r.text
        assert r.headers["Preference-Applied"] == f"respond-async, wait={cap:g}"
        assert cap <= took < cap + SLACK_S
        client.post(f"/v1/download/cancel/{r.json()['jobId']}")  # free the slow stack's worker


@pytest.mark.stack
def test_the_python_client_starts_with_a_wait_and_downloads_without_polling(kit, tmp_path):
    ids = available_ids(2, start=77_000)
    with DownloadClient(kit.entry, api_key=API_KEYS["alice"], sleep=_no_sleep) as client:
        job = client.start(ids, wait=4)
        assert job.is_terminal and job.status == "completed"
        client.download(job, tmp_path / "files.zip")  # the status it has is enough: verified, no poll
    verify_zip((tmp_path / "files.zip").read_bytes(), ids)


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"the client slept {seconds} s: it should not have needed to poll or retry")
