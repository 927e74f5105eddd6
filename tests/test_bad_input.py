"""Bad input gets a 4xx problem document and changes nothing. Through nginx, real stack."""

from __future__ import annotations

import json
import socket
import uuid

import pytest

from dlkit.jobs import owner_index_key

INITIATE = "/v1/download/initiate"

BAD_BODIES = {
    "malformed json": dict(content=b'{"file_ids": [70000', headers={"Content-Type": "application/json"}),
    "wrong content type": dict(
        content=b"file_ids=70000", headers={"Content-Type": "application/x-www-form-urlencoded"}
    ),
    "text body": dict(content=b'{"file_ids": [70000]}', headers={"Content-Type": "text/plain"}),
    "json array": dict(json=[70000]),
    "json null": dict(json=None, headers={"Content-Type": "application/json"}, content=b"null"),
    "missing field": dict(json={}),
    "extra field": dict(json={"file_ids": [70000], "priority": "high"}),
    "wrong field name": dict(json={"fileIds": [70000]}),
    "id below range": dict(json={"file_ids": [9999]}),
    "id above range": dict(json={"file_ids": [100_000_001]}),
    "negative id": dict(json={"file_ids": [-70000]}),
    "id as string": dict(json={"file_ids": ["70000"]}),
    "id as float": dict(json={"file_ids": [70000.5]}),
    "id as bool": dict(json={"file_ids": [True]}),
    "ids not a list": dict(json={"file_ids": 70000}),
    "no ids": dict(json={"file_ids": []}),
    "too many ids": dict(json={"file_ids": list(range(10_000, 11_001))}),
    "repeated id": dict(json={"file_ids": [70000, 70000]}),
    "nested junk": dict(json={"file_ids": [[70000]]}),
}

EXPECTED_STATUS = {"wrong content type": 415, "text body": 415}


def _request_kwargs(spec: dict) -> dict:
    spec = dict(spec)
    if "content" in spec:
        spec.pop("json", None)
    return spec


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_bad_initiate_bodies_get_a_problem_and_queue_nothing(case, alice, redis):
    before = redis.zcard(owner_index_key("alice"))
    r = alice.post(INITIATE, **_request_kwargs(BAD_BODIES[case]))
    assert r.status_code == EXPECTED_STATUS.get(case, 400), r.text
    assert r.headers["Content-Type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == r.status_code and problem["title"] and problem["requestId"] == r.headers["X-Request-ID"]
    assert "Traceback" not in r.text
    assert redis.zcard(owner_index_key("alice")) == before


@pytest.mark.parametrize("body", [{"file_id": 9999}, {"file_id": "70000"}, {}, {"file_id": 70000, "x": 1}])
@pytest.mark.parametrize("route", ["check", "start"])
def test_bad_single_file_bodies(route, body, alice):
    r = alice.post(f"/v1/download/{route}", json=body)
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/problem+json"


def test_validation_problems_say_what_is_wrong(alice):
    problem = alice.post(INITIATE, json={"file_ids": [70000, 5]}).json()
    assert problem["type"] == "urn:dlkit:problem:validation-error"
    assert problem["errors"][0]["loc"] == "file_ids.1"
    assert "10000" in problem["errors"][0]["msg"]


@pytest.mark.parametrize("path", ["/v1/download/status/{}", "/v1/download/{}", "/v1/download/cancel/{}"])
def test_unknown_and_malformed_job_ids(path, alice):
    method = "POST" if "cancel" in path else "GET"
    unknown = alice.request(method, path.format(uuid.uuid4()))
    assert unknown.status_code == 404 and unknown.json()["type"] == "urn:dlkit:problem:job-not-found"
    for bad in ("not-a-uuid", "1234", "%00"):
        r = alice.request(method, path.format(bad))
        assert r.status_code in (400, 404), (bad, r.status_code)
        assert r.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"limit": "ten"}, {"offset": -1}, {"page": 2}])
def test_bad_list_queries(params, alice):
    r = alice.get("/v1/downloads", params=params)
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic a2V5"}])
def test_missing_or_unknown_api_keys_are_401(headers, stack, redis):
    import httpx

    with httpx.Client(base_url=stack.entry, headers=headers) as anonymous:
        r = anonymous.post(INITIATE, json={"file_ids": [70000]})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.headers["Content-Type"] == "application/problem+json"


def test_bad_idempotency_key_is_400(alice, redis):
    before = redis.zcard(owner_index_key("alice"))
    r = alice.post(INITIATE, json={"file_ids": [70000]}, headers={"Idempotency-Key": "x" * 256})
    assert r.status_code == 400
    assert redis.zcard(owner_index_key("alice")) == before


def test_unknown_routes_and_methods_are_problems_too(alice):
    assert alice.get("/v1/nope").status_code == 404
    r = alice.delete("/v1/download/initiate")
    assert r.status_code == 405 and r.headers["Content-Type"] == "application/problem+json"


# --- Hostile input: whatever layer answers, a 4xx problem document, never HTML, never a 500 -----


def assert_problem(r, status: int | tuple[int, ...] | None = None) -> dict:
    statuses = status if isinstance(status, tuple) else (status,) if status else tuple(range(400, 500))
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    assert r.headers["Content-Type"] == "application/problem+json", r.text[:300]
    problem = r.json()
    assert problem["status"] == r.status_code and problem["title"]
    assert problem["requestId"] == r.headers["X-Request-ID"]
    return problem


@pytest.mark.parametrize("depth", [100, 1000, 5000])
def test_deeply_nested_json_is_a_400(alice, depth):
    # 1000 deep is a 2 KB body, and past Python's recursion limit: it must not become a 500.
    body = '{"file_ids": ' + "[" * depth + "70000" + "]" * depth + "}"
    r = alice.post(INITIATE, content=body.encode(), headers={"Content-Type": "application/json"})
    assert_problem(r, 400)


def test_a_body_past_nginx_limit_is_a_413_from_nginx(alice):
    r = alice.post(INITIATE, content=b"[" * 100_000, headers={"Content-Type": "application/json"})
    assert assert_problem(r, 413)["layer"] == "nginx"


def test_a_json_string_holding_json_is_not_parsed_twice(alice):
    r = alice.post(INITIATE, json='{"file_ids": [70000]}')
    assert_problem(r, 400)


@pytest.mark.parametrize("length", [4_100, 8_000])
@pytest.mark.parametrize("path", ["/v1/download/status/{}", "/v1/download/{}", "/v1/download/cancel/{}"])
def test_huge_job_ids_are_answered_by_the_api(alice, path, length):
    # Over gunicorn's default request line (4094) but within nginx's 8 KB: the API answers, not gunicorn.
    method = "POST" if "cancel" in path else "GET"
    problem = assert_problem(alice.request(method, path.format("a" * length)), (400, 404))
    assert "layer" not in problem


def test_a_request_line_past_8_kb_is_a_414_problem(alice):
    problem = assert_problem(alice.get("/v1/download/status/" + "a" * 9_000), 414)
    assert problem["layer"] == "edge"  # the first layer refuses it


def test_oversized_headers_are_a_431_problem(alice):
    assert_problem(alice.get("/health", headers={"X-Big": "b" * 9_000}), 431)


@pytest.mark.parametrize(
    "query",
    [
        "limit=1&limit=2&limit=3",
        "limit[]=1",
        "limit=1.5",
        "offset=%zz",
        "limit=%00",
        "=&&=",
        "limit=" + "9" * 5_000,
        "x=" + "a" * 7_000,
        "limit=1&" * 900,
    ],
)
def test_odd_query_strings(alice, query):
    r = alice.get(f"/v1/downloads?{query}")
    if r.status_code == 200:  # repeated scalars: the first one counts
        assert r.json()["limit"] == 1
    else:
        assert_problem(r, 400)


@pytest.mark.parametrize(
    "method", ["TRACE", "PROPFIND", "FOO", "AB", "A" * 25]
)  # gunicorn would refuse the last two in HTML
def test_unknown_and_refused_methods_are_405_problems_with_allow(alice, method):
    r = alice.request(method, "/v1/download/initiate")
    assert_problem(r, 405)
    assert {m.strip() for m in r.headers["Allow"].split(",")} == {"POST", "OPTIONS"}


@pytest.mark.parametrize(
    "request_line,status",
    [
        (b"get /health HTTP/1.1", 400),  # methods are upper case
        (b"GET /health HTTP/3.0", 505),
        (b"GET health HTTP/1.1", 400),
        ("GET /v1/download/status/é HTTP/1.1".encode(), 400),  # unencoded UTF-8: gunicorn would answer in HTML
        (b"\x16\x03\x01 TLS hello", 400),
    ],
)
def test_malformed_requests_are_problems(stack, request_line, status):
    host, port = stack.entry.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), head
    assert b"Content-Type: application/problem+json" in head
    assert json.loads(body)["status"] == status


@pytest.mark.parametrize("value", [b"a\x01b", b"\x1b[31m", b"a\x7fb", b"a\x00b", b"\x08"])
@pytest.mark.parametrize("header", [b"X-Odd", b"X-Request-ID"])
@pytest.mark.parametrize("path", [b"/health", b"/v1/downloads"])
def test_control_characters_in_a_header_value_are_a_400_problem(stack, path, header, value):
    # Valid HTTP has none (RFC 9110 5.5); gunicorn refuses them with an HTML page, so nginx refuses first.
    host, port = stack.entry.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + header + b": " + value + b"\r\nConnection: close\r\n\r\n"
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", raw[:400]
    assert b"Content-Type: application/problem+json" in head, raw[:400]
    assert json.loads(body)["status"] == 400
