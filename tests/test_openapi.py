"""The OpenAPI document: valid, complete (every error a route can give, as problem JSON), in step with
what every layer of the chain answers, and schemathesis finds nothing when it fuzzes the stack from it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from dlkit.kit.component import HOST

from .support import API_KEYS, TERMINAL

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = "application/problem+json"
# Error responses that carry the status document, not a problem: a cancelled job's status, and
# /health's own verdict.
NOT_PROBLEMS = {("get", "/v1/download/status/{job_id}", "410"), ("get", "/health", "503")}
# What any request can meet through the proxies, and what each kind of route adds.
ANY_ROUTE = {"400", "413", "414", "431", "500", "502", "504"}
API_ROUTE = ANY_ROUTE | {"401", "429", "503"}


@pytest.fixture(scope="module")
def document(stack) -> dict:
    r = httpx.get(f"{stack.entry}/openapi.json")  # no API key needed
    assert r.status_code == 200
    return r.json()


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_the_document_is_valid_openapi(document):
    validate(document)  # raises on the first error, e.g. `securitySchemes: null`
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from API_KEYS (none needed when it is unset).",
    }


def test_every_error_is_documented_as_problem_json(document):
    for method, path, operation in operations(document):
        responses = operation["responses"]
        errors = {status for status in responses if status >= "400"}
        needed = API_ROUTE if operation.get("security") else ANY_ROUTE
        if method == "post":
            needed = needed | {"415"}
        assert needed <= errors, (method, path, needed - errors)
        for status in errors - {s for m, p, s in NOT_PROBLEMS if (m, p) == (method, path)}:
            assert list(responses[status]["content"]) == [PROBLEM], (method, path, status)
            assert responses[status]["content"][PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
    paths = document["paths"]
    assert {"404", "410"} <= set(paths["/v1/download/status/{job_id}"]["get"]["responses"])
    assert {"404", "409", "410"} <= set(paths["/v1/download/{job_id}"]["get"]["responses"])
    assert {"404", "409"} <= set(paths["/v1/download/cancel/{job_id}"]["post"]["responses"])
    assert {"404", "504", "524"} <= set(paths["/v1/download/start"]["post"]["responses"])
    assert "422" in paths["/v1/download/initiate"]["post"]["responses"]
    assert "errors" in document["components"]["schemas"]["Problem"]["properties"]


def test_routes_with_an_owner_declare_the_api_key(document):
    for method, path, operation in operations(document):
        public = path in ("/", "/health")
        assert (operation.get("security") is None) is public, (method, path)


@pytest.mark.parametrize("body,route", [({"file_id": 70000.0}, "check"), ({"file_ids": [70000.0, 1e5]}, "initiate")])
def test_integral_floats_are_integers(alice, body, route):
    # JSON Schema's `integer` (what the document says) includes 70000.0; 70000.5 stays a 400 (test_bad_input.py).
    r = alice.post(f"/v1/download/{route}", json=body)
    assert r.status_code in (200, 202), r.text
    if route == "check":
        assert r.json()["file_id"] == 70000
    else:
        assert alice.get(f"/v1/download/status/{r.json()['jobId']}").json()["totalFiles"] == 2


def example_paths(document: dict) -> dict[str, set[str]]:
    """Each documented path with a concrete id, and the methods its Allow must list."""
    allowed = {}
    for path, item in document["paths"].items():
        methods = {m.upper() for m in item} | {"OPTIONS"}
        if "GET" in methods:
            methods.add("HEAD")
        allowed[path.replace("{job_id}", str(uuid.uuid4()))] = methods
    return allowed


def allow(response: httpx.Response) -> set[str]:
    return {m.strip() for m in response.headers["Allow"].split(",")}


def test_unsupported_methods_get_405_with_allow_from_the_api(alice, document):
    for path, methods in example_paths(document).items():
        for method in {"DELETE", "PUT", "PATCH", "GET", "POST"} - methods:
            r = alice.request(method, path, json={"file_ids": [70000]} if method != "GET" else None)
            assert r.status_code == 405, (method, path, r.status_code)
            assert r.headers["Content-Type"] == PROBLEM and r.json()["status"] == 405
            assert allow(r) == methods, (method, path)


@pytest.mark.parametrize("layer", ["edge", "lb", "nginx"])
def test_trace_gets_405_problem_with_the_routes_allow_at_every_layer(stack, document, layer):
    # nginx refuses TRACE itself, before any location: each proxy answers, with its own Allow table.
    with httpx.Client(base_url=f"http://{HOST}:{stack.ports[layer]}") as client:
        for path, methods in example_paths(document).items():
            r = client.request("TRACE", path)
            assert r.status_code == 405, (layer, path)
            assert r.headers["Content-Type"] == PROBLEM and r.headers["X-Dlkit-Layer"] == layer
            assert r.json() | {"requestId": None} == {
                "type": "about:blank",
                "title": "Method Not Allowed",
                "status": 405,
                "layer": layer,
                "detail": r.json()["detail"],
                "requestId": None,
            }
            assert allow(r) == methods, (layer, path)


def cancel_active_jobs(client: httpx.Client) -> None:
    """Jobs the fuzzer started: cancel what still runs, so that later tests do not queue behind them."""
    for offset in range(0, 10_000, 100):
        jobs = client.get("/v1/downloads", params={"limit": 100, "offset": offset}).json()["jobs"]
        for job in jobs:
            if job["status"] not in TERMINAL:
                client.post(f"/v1/download/cancel/{job['jobId']}")
        if len(jobs) < 100:
            return


def test_schemathesis_with_every_check_finds_nothing(stack, alice):
    """The command in schemathesis.toml's header, on a bounded budget, run from the repository's root
    (where it reads schemathesis.toml), through the whole chain. By hand: raise --max-examples."""
    command = [
        shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or "schemathesis",
        "run",
        f"{stack.entry}/openapi.json",
        "--checks",
        "all",
        "-H",
        f"Authorization: Bearer {API_KEYS['alice']}",
        "--max-examples",
        "20",
        # One worker: with two, hypothesis (describing a lambda) parses source in both threads at once,
        # and CPython 3.11's parser is not thread-safe ("AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--no-color",
    ]
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        cancel_active_jobs(alice)
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert cases and cases[1] == cases[2] and int(cases[1]) > 100, result.stdout[-5_000:]
