"""The status poll's cost and its own rate limit: one Redis round trip per poll, the limit counted in it
(app/extensions.py RouteLimit), on the session stack's Redis through an in-process app."""

from __future__ import annotations

import uuid
from unittest.mock import patch
from urllib.parse import parse_qs, urlsplit

import pytest
from rq import Queue

from app.hooks import retry_after
from dlkit import accounting
from dlkit.kit.bench import counted_round_trips
from dlkit.settings import Settings
from dlkit.storage import PresignedUrls, s3_client

from .support import API_KEYS, initiate, poll

# An hour's window: the tests' few requests never straddle two windows.
HOUR_MS = 3_600_000
INITIATE = "/v1/download/initiate"


@pytest.fixture
def bob_headers():
    return {"Authorization": f"Bearer {API_KEYS['bob']}"}


def _job(client, headers) -> str:
    r = client.post("/v1/download/initiate", json={"file_ids": [70000]}, headers=headers)
    assert r.status_code == 202, r.text
    return r.json["jobId"]


def test_a_status_poll_is_one_round_trip_and_carries_the_rate_limit_headers(make_app, bob, bob_headers):
    job_id = initiate(bob, [70000]).json()["jobId"]
    assert poll(bob, job_id)[-1]["status"] == "completed"  # (a queued job's poll also reads its queue place)
    client = make_app(RATE_LIMIT_MAX_REQUESTS=1000, RATE_LIMIT_WINDOW_MS=HOUR_MS).test_client()
    path = f"/v1/download/status/{job_id}"
    first = client.get(path, headers=bob_headers)  # the window's counter created (and its EXPIRE sent)
    with counted_round_trips() as trips:
        polls = [client.get(path, headers=bob_headers) for _ in range(10)]
    assert all(r.status_code == 200 for r in polls), [r.text for r in polls]
    assert trips[0] == 10
    remaining = [int(r.headers["RateLimit-Remaining"]) for r in [first, *polls]]
    assert remaining == list(range(remaining[0], remaining[0] - 11, -1)) and remaining[-1] < 1000
    assert {r.headers["RateLimit-Limit"] for r in polls} == {"1000"}
    assert 0 < int(polls[-1].headers["RateLimit-Reset"]) <= HOUR_MS // 1000


def test_a_status_poll_past_its_limit_gets_429_with_retry_after(make_app, bob_headers, redis):
    app = make_app(RATE_LIMIT_MAX_REQUESTS=3, RATE_LIMIT_WINDOW_MS=HOUR_MS)
    for key in redis.scan_iter("dlkit:ratelimit:status:3/3600:*"):
        redis.delete(key)  # an earlier run of this test in the same hour
    client = app.test_client()
    path = "/v1/download/status/00000000-0000-4000-8000-000000000000"  # unknown: 404s count too
    answers = [client.get(path, headers=bob_headers) for _ in range(4)]
    assert [r.status_code for r in answers] == [404, 404, 404, 429]
    refused = answers[-1]
    assert refused.mimetype == "application/problem+json"
    assert refused.json["type"] == "urn:dlkit:problem:rate-limited"
    assert int(refused.headers["Retry-After"]) >= 1 and refused.headers["RateLimit-Remaining"] == "0"
    # Its own budget, as Flask-Limiter's default limits are per route: other routes still answer.
    assert client.post("/v1/download/check", json={"file_id": 70000}, headers=bob_headers).status_code == 200


def test_a_presigned_url_is_reused_until_half_its_life_is_gone():
    now = [1_000_000.0]
    settings = Settings(S3_ENDPOINT="http://127.0.0.1:9", S3_ACCESS_KEY_ID="k", S3_SECRET_ACCESS_KEY="s")
    client = s3_client(settings)  # signing is local: nothing is sent
    urls = PresignedUrls(client, clock=lambda: now[0])
    with patch.object(client, "generate_presigned_url", wraps=client.generate_presigned_url) as sign:
        first = urls.get("bucket", "downloads/a.zip", 300, "a.zip")
        assert parse_qs(urlsplit(first).query)["X-Amz-Expires"] == ["300"]  # its lifetime is the TTL
        now[0] += 149
        assert urls.get("bucket", "downloads/a.zip", 300, "a.zip") == first  # 151 s left: reused
        assert sign.call_count == 1
        now[0] += 2
        urls.get("bucket", "downloads/a.zip", 300, "a.zip")  # 149 s left, under half: signed afresh
        assert sign.call_count == 2
        urls.get("bucket", "downloads/b.zip", 300, "b.zip")  # another object, another URL
        assert sign.call_count == 3


def test_a_queued_job_is_told_its_wait_from_its_place_in_the_queue_and_the_workers(make_app, bob_headers, redis):
    # A queue of its own that no worker serves, so its jobs stay queued in the order they came.
    queue_name = f"test-backlog-{uuid.uuid4().hex[:8]}"
    app = make_app(QUEUE_NAME=queue_name, RATE_LIMIT_MAX_REQUESTS=1000, RATE_LIMIT_WINDOW_MS=HOUR_MS)
    client = app.test_client()
    settings = app.extensions["dlkit"].settings
    live = app.extensions["dlkit"].live_workers
    try:
        ids = [_job(client, bob_headers) for _ in range(4)]

        def polled(job_id: str) -> tuple[float, float]:
            r = client.get(f"/v1/download/status/{job_id}", headers=bob_headers)
            assert r.status_code == 200 and r.json["status"] == "queued"
            return r.json["estimatedSecondsRemaining"], float(r.headers["Retry-After"])

        mean_job_s = settings.scaled((settings.DOWNLOAD_DELAY_MIN_MS + settings.DOWNLOAD_DELAY_MAX_MS) / 2000)
        store = app.extensions["dlkit"].store

        def wait(job_id: str, estimate: float) -> float:
            return estimate - store.get(job_id).delay_s  # the estimate less the job's own work

        first, last = polled(ids[0]), polled(ids[-1])
        # No worker yet counts as one: the last waits for the three ahead of it and its own turn.
        assert wait(ids[0], first[0]) == pytest.approx(mean_job_s, abs=0.01)
        assert wait(ids[-1], last[0]) == pytest.approx(4 * mean_job_s, abs=0.01)
        assert last[1] > first[1] >= settings.poll_interval_s  # far back: asked to come back later
        assert last[1] == float(retry_after(last[0] / 2))
        live.stamp("a")  # two live workers: half the wait
        live.stamp("b")
        with counted_round_trips() as trips:
            shared = polled(ids[-1])
        assert trips[0] == 2  # the job and its limit, then its place in the queue and the workers
        assert wait(ids[-1], shared[0]) == pytest.approx(2 * mean_job_s, abs=0.01)
    finally:
        Queue(queue_name, connection=redis).empty()
        redis.delete(live.key)


def test_a_job_near_its_end_is_polled_just_after_its_expected_end(make_app, bob_headers, redis):
    """Far from its end, Retry-After is half the time left; within two poll intervals of it, just after it
    (a quarter interval of margin), so the poll that finds the file is not up to an interval late."""
    queue_name = f"test-near-end-{uuid.uuid4().hex[:8]}"  # no worker: the test starts the jobs itself

    def retry_after_once_started(delay_ms: int) -> tuple[float, float, float]:
        app = make_app(
            QUEUE_NAME=queue_name,
            RATE_LIMIT_MAX_REQUESTS=1000,
            RATE_LIMIT_WINDOW_MS=HOUR_MS,
            DOWNLOAD_DELAY_MIN_MS=delay_ms,
            DOWNLOAD_DELAY_MAX_MS=delay_ms,
        )
        client = app.test_client()
        job_id = _job(client, bob_headers)
        assert app.extensions["dlkit"].store.start(job_id).applied  # as the worker does
        r = client.get(f"/v1/download/status/{job_id}", headers=bob_headers)
        assert r.status_code == 200 and r.json["status"] == "processing"
        interval = app.extensions["dlkit"].settings.poll_interval_s
        return r.json["estimatedSecondsRemaining"], float(r.headers["Retry-After"]), interval

    try:
        eta, wait, interval = retry_after_once_started(60_000)  # 12 intervals of work
        assert eta > 2 * interval and wait == float(retry_after(eta / 2))
        eta, wait, interval = retry_after_once_started(6_000)  # 1.2 intervals
        assert 0 < eta <= 2 * interval
        assert wait == float(retry_after(eta + interval / 4))
    finally:
        Queue(queue_name, connection=redis).empty()


def test_initiate_counts_its_own_limit_and_answers_429_past_it(make_app, bob_headers, redis):
    queue_name = f"test-limit-{uuid.uuid4().hex[:8]}"  # no worker: nothing runs
    app = make_app(QUEUE_NAME=queue_name, RATE_LIMIT_MAX_REQUESTS=2, RATE_LIMIT_WINDOW_MS=HOUR_MS)
    for key in redis.scan_iter("dlkit:ratelimit:initiate:2/3600:*"):
        redis.delete(key)  # an earlier run of this test in the same hour
    client = app.test_client()
    try:
        answers = [
            client.post("/v1/download/initiate", json={"file_ids": [70000]}, headers=bob_headers) for _ in range(3)
        ]
        assert [r.status_code for r in answers] == [202, 202, 429]
        assert [r.headers["RateLimit-Remaining"] for r in answers] == ["1", "0", "0"]
        assert answers[0].headers["RateLimit-Limit"] == "2" and int(answers[0].headers["RateLimit-Reset"]) >= 1
        refused = answers[-1]
        assert refused.mimetype == "application/problem+json" and int(refused.headers["Retry-After"]) >= 1
        assert Queue(queue_name, connection=redis).count == 2  # the refused one was never queued
    finally:
        Queue(queue_name, connection=redis).empty()


def test_an_initiate_is_one_round_trip_with_its_limit_key_cap_and_accounting(make_app, bob_headers, redis):
    """The rate limit's count, the Idempotency-Key, the active-jobs cap, the record, RQ's queue entry and
    the accounting counter: one script. A refused body is counted too, by one round trip of its own."""
    queue_name = f"test-one-trip-{uuid.uuid4().hex[:8]}"  # no worker: nothing runs
    app = make_app(
        QUEUE_NAME=queue_name,
        RATE_LIMIT_MAX_REQUESTS=1000,
        RATE_LIMIT_WINDOW_MS=HOUR_MS,
        MAX_ACTIVE_JOBS_PER_OWNER=1000,
    )
    client = app.test_client()
    try:
        _job(client, bob_headers)  # connections opened, the script loaded
        created = int(redis.get(accounting.JOBS_CREATED) or 0)
        with counted_round_trips() as trips:
            answers = [
                client.post(
                    INITIATE, json={"file_ids": [70000 + 7 * n]}, headers={**bob_headers, "Idempotency-Key": f"k{n}"}
                )
                for n in range(5)
            ]
        assert [r.status_code for r in answers] == [202] * 5, [r.text for r in answers]
        assert trips[0] == 5
        assert Queue(queue_name, connection=redis).count == 6
        assert int(redis.get(accounting.JOBS_CREATED)) - created == 5
        remaining = [int(r.headers["RateLimit-Remaining"]) for r in answers]
        assert remaining == list(range(remaining[0], remaining[0] - 5, -1))
        with counted_round_trips() as trips:
            refused = client.post(INITIATE, json={"file_ids": []}, headers=bob_headers)
        assert refused.status_code == 400 and trips[0] == 1
        assert int(refused.headers["RateLimit-Remaining"]) == remaining[-1] - 1  # counted, nothing created
        assert int(redis.get(accounting.JOBS_CREATED)) - created == 5
    finally:
        Queue(queue_name, connection=redis).empty()


def test_a_bad_key_is_still_limited_by_address_on_the_self_limited_routes(make_app):
    """The poll and initiate count known callers themselves; a bad key is counted by Flask-Limiter, by
    address, so API keys cannot be guessed there at an unlimited rate."""
    client = make_app(RATE_LIMIT_MAX_REQUESTS=2, RATE_LIMIT_WINDOW_MS=HOUR_MS, TRUSTED_PROXY_HOPS=0).test_client()
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"  # this run's own
    bad = {"Authorization": "Bearer not-a-key"}
    for method, path in [("GET", "/v1/download/status/00000000-0000-4000-8000-000000000000"), ("POST", INITIATE)]:
        answers = [
            client.open(path, method=method, headers=bad, json={}, environ_base={"REMOTE_ADDR": address})
            for _ in range(3)
        ]
        assert [r.status_code for r in answers] == [401, 401, 429], path
        assert answers[-1].json["type"] == "urn:dlkit:problem:rate-limited"
