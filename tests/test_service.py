"""Root, health, OpenAPI, the headers every response carries, rate limits, and the legacy calls."""

from __future__ import annotations

import socket
import sys

import psutil
import pytest

from dlkit import files

from .support import API_KEYS


def test_root_names_the_service_and_links_the_docs(alice):
    r = alice.get("/")
    assert r.status_code == 200
    assert r.json()["links"]["openapi"] == "/openapi.json"
    assert alice.get(r.json()["links"]["docs"]).status_code == 200


def test_health_reports_each_check(alice):
    r = alice.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "healthy", "checks": {"storage": "ok", "redis": "ok", "workers": "ok"}}


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT spreads connections on Linux only")
def test_gunicorn_workers_each_listen_and_share_the_connections(stack):
    """nginx's upstream keep-alive carries every request over a few long-lived connections; with one
    shared socket the worker that woke first could take them all (app/gunicorn_conf.py, reuse_port)."""
    port = stack.ports["api"]
    master = psutil.Process(stack.components["api"].pid)
    workers = master.children()
    assert len(workers) >= 2

    def listens(process: psutil.Process) -> bool:
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections("tcp"))

    assert not listens(master), "the master holds the one shared socket: no SO_REUSEPORT"
    assert all(listens(worker) for worker in workers)

    # As nginx opens its keep-alive pool: a burst of connections, each answered once and kept open.
    connections = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(32)]
    try:
        for conn in connections:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        for conn in connections:
            assert conn.recv(64).startswith(b"HTTP/1.1 200")
        ports = {conn.getsockname()[1] for conn in connections}
        served = {
            worker.pid
            for worker in workers
            for c in worker.net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port and c.raddr and c.raddr.port in ports
        }
        assert served == {worker.pid for worker in workers}, "one worker took every connection"
    finally:
        for conn in connections:
            conn.close()


def test_openapi_document_describes_every_route_from_the_validating_models(alice):
    doc = alice.get("/openapi.json").json()
    paths = doc["paths"]
    for path in [
        "/health",
        "/v1/download/check",
        "/v1/download/start",
        "/v1/download/initiate",
        "/v1/download/status/{job_id}",
        "/v1/download/{job_id}",
        "/v1/download/cancel/{job_id}",
        "/v1/downloads",
    ]:
        assert path in paths, path
    schema = doc["components"]["schemas"]["InitiateRequest"]
    items = schema["properties"]["file_ids"]["items"]
    assert (items["minimum"], items["maximum"]) == (10_000, 100_000_000)
    assert schema["properties"]["file_ids"]["maxItems"] == 1000
    assert schema["additionalProperties"] is False


def test_every_response_carries_request_id_and_security_headers(alice):
    for r in [alice.get("/health"), alice.get("/v1/nope"), alice.post("/v1/download/initiate", json={})]:
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        assert r.headers["X-Request-ID"]
    echoed = alice.get("/health", headers={"X-Request-ID": "trace-123"})
    assert echoed.headers["X-Request-ID"] == "trace-123"
    problem = alice.post("/v1/download/initiate", json={}, headers={"X-Request-ID": "trace-456"})
    assert problem.json()["requestId"] == "trace-456"


def test_rate_limit_headers_are_sent(alice):
    r = alice.post("/v1/download/check", json={"file_id": 70000})
    assert int(r.headers["RateLimit-Limit"]) >= int(r.headers["RateLimit-Remaining"]) >= 0
    assert int(r.headers["RateLimit-Reset"]) >= 0


def test_cors_preflight_allows_the_api_headers(alice):
    r = alice.options(
        "/v1/download/initiate",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type, Idempotency-Key",
        },
    )
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] in ("*", "https://app.example")
    assert "idempotency-key" in r.headers["Access-Control-Allow-Headers"].lower()


def test_check_reports_availability(alice):
    assert alice.post("/v1/download/check", json={"file_id": 70000}).json() == {
        "file_id": 70000,
        "available": True,
        "s3Key": files.object_key(70000),
        "size": files.file_size(70000),
    }
    assert alice.post("/v1/download/check", json={"file_id": 70001}).json() == {
        "file_id": 70001,
        "available": False,
        "s3Key": None,
        "size": None,
    }


def test_legacy_start_through_nginx_ends_in_200_or_the_apps_504(alice, settings):
    # Delays of 0.2-2.4 s against a 0.6 s REQUEST_TIMEOUT_MS: most are cut, as at real speed.
    outcomes = set()
    for _ in range(6):
        r = alice.post("/v1/download/start", json={"file_id": 70000})
        assert r.status_code in (200, 504), r.text
        if r.status_code == 504:
            assert r.json()["type"] == "urn:dlkit:problem:request-timeout"
            assert r.elapsed.total_seconds() >= settings.request_timeout_s
        outcomes.add(r.status_code)
    assert 504 in outcomes


# In-process app against the stack's real Redis: settings a test must pin exactly.


def test_legacy_start_completes_when_the_work_fits_the_timeout(make_app):
    client = make_app(
        DOWNLOAD_DELAY_MIN_MS=1000, DOWNLOAD_DELAY_MAX_MS=1000, REQUEST_TIMEOUT_MS=30000, API_KEYS=""
    ).test_client()
    r = client.post("/v1/download/start", json={"file_id": 70000})
    assert r.status_code == 200
    assert r.json["status"] == "completed" and r.json["size"] == files.file_size(70000)
    assert r.json["processingTimeMs"] >= 20  # 1000 ms x 0.02
    missing = client.post("/v1/download/start", json={"file_id": 70001})
    assert missing.status_code == 404 and missing.json["type"] == "urn:dlkit:problem:file-not-available"


def test_legacy_start_answers_504_when_the_work_outlives_the_timeout(make_app):
    client = make_app(
        DOWNLOAD_DELAY_MIN_MS=60000, DOWNLOAD_DELAY_MAX_MS=60000, REQUEST_TIMEOUT_MS=10000, API_KEYS=""
    ).test_client()
    r = client.post("/v1/download/start", json={"file_id": 70000})
    assert r.status_code == 504 and r.mimetype == "application/problem+json"


def test_rate_limit_answers_429_with_retry_after(make_app):
    client = make_app(RATE_LIMIT_MAX_REQUESTS=3, RATE_LIMIT_WINDOW_MS=60_000).test_client()
    headers = {"Authorization": f"Bearer {API_KEYS['bob']}", "X-Forwarded-For": "203.0.113.9"}
    codes = [client.post("/v1/download/check", json={"file_id": 70000}, headers=headers).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = client.post("/v1/download/check", json={"file_id": 70000}, headers=headers)
    assert r.mimetype == "application/problem+json"
    assert int(r.headers["Retry-After"]) >= 1 and r.headers["RateLimit-Remaining"] == "0"
    assert client.get("/health").status_code == 200  # health is never limited


@pytest.mark.parametrize("origins,allowed", [("https://a.example", True), ("https://b.example", False)])
def test_cors_follows_cors_origins(make_app, origins, allowed):
    client = make_app(CORS_ORIGINS=origins).test_client()
    r = client.get("/health", headers={"Origin": "https://a.example"})
    assert ("Access-Control-Allow-Origin" in r.headers) is allowed
