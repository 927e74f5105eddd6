"""The status poll's cost and its own rate limit: one Redis round trip per poll, the limit counted in it
(app/extensions.py PollLimit), on the session stack's Redis through an in-process app."""

from __future__ import annotations

from unittest.mock import patch
from urllib.parse import parse_qs, urlsplit

import pytest

from dlkit.kit.bench import counted_round_trips
from dlkit.settings import Settings
from dlkit.storage import PresignedUrls, s3_client

from .support import API_KEYS

# An hour's window: the tests' few requests never straddle two windows.
HOUR_MS = 3_600_000


@pytest.fixture
def bob_headers():
    return {"Authorization": f"Bearer {API_KEYS['bob']}"}


def _job(client, headers) -> str:
    r = client.post("/v1/download/initiate", json={"file_ids": [70000]}, headers=headers)
    assert r.status_code == 202, r.text
    return r.json["jobId"]


def test_a_status_poll_is_one_round_trip_and_carries_the_rate_limit_headers(make_app, bob_headers):
    client = make_app(RATE_LIMIT_MAX_REQUESTS=1000, RATE_LIMIT_WINDOW_MS=HOUR_MS).test_client()
    path = f"/v1/download/status/{_job(client, bob_headers)}"
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
