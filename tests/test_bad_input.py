"""Bad input gets a 4xx problem document and changes nothing. Through nginx, real stack."""

from __future__ import annotations

import uuid

import pytest

from dlkit.jobs import owner_index_key

INITIATE = "/v1/download/initiate"

BAD_BODIES = {
    "malformed json": dict(content=b'{"file_ids": [70000', headers={"Content-Type": "application/json"}),
    "wrong content type": dict(content=b"file_ids=70000", headers={"Content-Type": "application/x-www-form-urlencoded"}),
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
