"""Tracing, JSON logs and Sentry (dlkit/telemetry.py) against the real parts: a stack of its own with
spans written to a file, and the Sentry SDK sending to a tiny HTTP server in this test."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import flask
import httpx
import pytest
from flask import Flask

from dlkit import telemetry
from dlkit.kit import ROOT
from dlkit.kit.stack import free_base_port

from .support import available_ids, client_for, eventually, initiate, poll


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


@pytest.mark.stack
def test_one_trace_from_initiate_through_the_worker(traced):
    spans_file = traced.home / "spans.jsonl"
    with client_for(traced, "alice") as client:
        response = initiate(client, available_ids(3))
        assert response.status_code == 202
        job_id = response.json()["jobId"]
        trace_id = response.headers["traceresponse"].split("-")[1]
        assert poll(client, job_id)[-1]["status"] == "completed"
        # The problem document of an error names its trace.
        missing = client.get(f"/v1/download/status/{uuid.uuid4()}")
        assert missing.status_code == 404
        assert missing.json()["traceId"] == missing.headers["traceresponse"].split("-")[1]

    def trace_spans():
        spans = [s for s in _lines(spans_file) if s["context"]["trace_id"] == f"0x{trace_id}"]
        names = {s["name"] for s in spans}
        return spans if "download.job" in names and any(n.startswith("POST") for n in names) else None

    spans = eventually(trace_spans)
    assert spans, f"no API and worker spans of trace {trace_id} in {spans_file}"
    by_id = {s["context"]["span_id"]: s for s in spans}
    server = next(s for s in spans if s["kind"] == "SpanKind.SERVER")
    assert server["resource"]["attributes"]["service.name"] == "dlkit-api"
    assert server["attributes"]["http.route"] == "/v1/download/initiate"
    assert server["parent_id"] is None

    job = next(s for s in spans if s["name"] == "download.job")
    assert job["resource"]["attributes"]["service.name"] == "dlkit-worker"
    assert job["parent_id"] == server["context"]["span_id"]
    assert job["attributes"] == {"download.jobId": job_id, "download.fileCount": 3}
    assert [e["attributes"]["status"] for e in job["events"]] == ["processing", "completed"]

    files = [s for s in spans if s["name"] == "download.file"]
    assert sorted(s["attributes"]["download.fileIndex"] for s in files) == [1, 2, 3]
    assert all(s["parent_id"] == job["context"]["span_id"] for s in files)
    upload = next(s for s in spans if s["name"] == "download.upload")
    assert upload["parent_id"] == job["context"]["span_id"]
    # The instrumented clients: S3 calls under the upload, Redis calls under the job's steps.
    s3_calls = [s for s in spans if s["attributes"].get("rpc.system") == "aws-api"]
    assert any(s["parent_id"] == upload["context"]["span_id"] for s in s3_calls)
    redis_calls = [s for s in spans if s["attributes"].get("db.system") == "redis"]
    assert redis_calls and all(s["parent_id"] in by_id for s in redis_calls)
    # RQ's own loop and the /metrics scrapes talk to Redis all day: none of that starts a trace.
    roots = {s["name"] for s in _lines(spans_file) if s["parent_id"] is None}
    assert roots <= {"POST /v1/download/initiate", "GET /v1/download/status/<job_id>"}, roots

    # The same trace id in the JSON log lines of both processes, with the request and job ids.
    def api_access_line():
        return next(
            (
                line
                for line in _lines(traced.site.log("api"))
                if line.get("trace_id") == trace_id and line.get("logger") == "gunicorn.access"
            ),
            None,
        )

    access = eventually(api_access_line)
    assert access, "no access log line with the trace id"
    assert access["path"] == "/v1/download/initiate" and access["status"] == 202
    assert access["job_id"] == job_id and access["request_id"] == response.headers["X-Request-ID"]

    worker_lines = eventually(
        lambda: [line for line in _lines(traced.site.log("worker-1")) if line.get("trace_id") == trace_id]
    )
    assert worker_lines, "no worker log line with the trace id"
    assert {line["job_id"] for line in worker_lines} == {job_id}


# What a work horse does (tag the job, then fail), and a Flask app failing in a job's route.
SENTRY_SCRIPT = """
import sys
from types import SimpleNamespace
import sentry_sdk
from flask import Flask
from dlkit import telemetry
from dlkit.settings import Settings

telemetry.setup(Settings.from_env({"SENTRY_DSN": sys.argv[1]}), "dlkit-worker")
with sentry_sdk.isolation_scope():
    telemetry.job_started(SimpleNamespace(id="job-42", total_files=7))
    for error in (ConnectionResetError("client went away"), RuntimeError("boom")):
        try:
            raise error
        except Exception as exc:
            sentry_sdk.capture_exception(exc)

app = Flask("api")
telemetry.instrument_app(app)

@app.post("/v1/download/cancel/<job_id>")
def fail(job_id):
    raise KeyError("api boom")

app.test_client().post("/v1/download/cancel/job-43", json={"file_ids": [70000, 70007, 70014]})
sentry_sdk.flush(timeout=10)
"""


def test_sentry_events_carry_the_job_and_skip_client_network_errors(tmp_path):
    events: list[dict] = []

    class Envelopes(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            # The SDK compresses with brotli when that module is installed, else with gzip.
            if self.headers.get("Content-Encoding") == "br":
                import brotli

                body = brotli.decompress(body)
            elif self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            lines = body.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    events.append(json.loads(payload))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Envelopes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dsn = f"http://public@127.0.0.1:{server.server_port}/1"
        subprocess.run([sys.executable, "-c", SENTRY_SCRIPT, dsn], cwd=ROOT, check=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    # The client's reset connection is not among them.
    assert [e["exception"]["values"][-1]["type"] for e in events] == ["RuntimeError", "KeyError"], events
    worker, api = events
    assert worker["tags"]["download.jobId"] == "job-42"
    assert str(worker["tags"]["download.fileCount"]) == "7"
    assert api["tags"]["download.jobId"] == "job-43"
    assert str(api["tags"]["download.fileCount"]) == "3"


def test_log_lines_carry_the_request_and_job_ids():
    """The filter and formatter every process uses (gunicorn's logconfig_dict, the workers)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(telemetry.json_formatter())
    handler.addFilter(telemetry.ContextFilter())
    logger = logging.getLogger("tests.tracing")
    logger.addHandler(handler)
    app = Flask(__name__)
    app.add_url_rule("/v1/download/status/<job_id>", "status", lambda job_id: "")
    try:
        with app.test_request_context("/v1/download/status/abc"):
            flask.g.request_id = "rid-1"
            logger.warning("in a request")
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "in a request" and inside["level"] == "WARNING"
    assert inside["request_id"] == "rid-1" and inside["job_id"] == "abc"
    assert "trace_id" not in inside  # tracing is off in this process
    assert "request_id" not in outside and "job_id" not in outside


class _OtlpReceiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector reduced to what the test reads: the spans posted to /v1/traces."""

    spans: list = []

    def do_POST(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.stack
def test_dlkit_up_otlp_sends_spans_to_a_collector(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    home = tmp_path / "stack"
    env = {**os.environ, "DLKIT_HOME": str(home)}
    env.pop("TRACES_FILE", None)
    base = free_base_port()

    def dlkit(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "dlkit.kit.cli", *args]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)

    try:
        otlp = f"http://127.0.0.1:{server.server_port}"
        result = dlkit("up", "--time-scale", "0.02", "--workers", "1", "--base-port", str(base), "--otlp", otlp)
        assert result.returncode == 0, result.stdout + result.stderr
        with httpx.Client(base_url=f"http://127.0.0.1:{base}", timeout=10) as client:
            job_id = initiate(client, available_ids(2)).json()["jobId"]
            assert poll(client, job_id)[-1]["status"] == "completed"

        def job_span():
            for span in _OtlpReceiver.spans:
                attributes = {a.key: a.value for a in span.attributes}
                if span.name == "download.job" and attributes.get("download.jobId").string_value == job_id:
                    return span
            return None

        received = eventually(job_span)
        assert received, f"the collector got no download.job span for {job_id}"
        # And the same span in the stack's own span file.
        in_file = eventually(
            lambda: [
                s
                for s in _lines(home / "logs" / "spans.jsonl")
                if s["context"]["span_id"] == f"0x{received.span_id.hex()}"
            ]
        )
        assert in_file and in_file[0]["name"] == "download.job"
    finally:
        dlkit("down")
        server.shutdown()
        server.server_close()


def test_tracing_off_still_logs_json_with_the_job_id(stack, alice):
    """The session stack sets none of the variables: no trace anywhere, the same JSON log lines."""
    response = initiate(alice, available_ids(1))
    job_id = response.json()["jobId"]
    assert "traceresponse" not in response.headers
    assert poll(alice, job_id)[-1]["status"] == "completed"
    missing = alice.get(f"/v1/download/status/{uuid.uuid4()}")
    assert missing.status_code == 404 and "traceId" not in missing.json()

    def worker_lines():
        logs = [stack.site.log(name) for name in stack.components if name.startswith("worker-")]
        return [line for log in logs for line in _lines(log) if line.get("job_id") == job_id]

    lines = eventually(worker_lines)
    assert [line["message"] for line in lines] == [f"job {job_id} picked up", f"job {job_id} ended: completed"]
    assert all("trace_id" not in line for line in lines)
    access = eventually(
        lambda: [
            line
            for line in _lines(stack.site.log("api"))
            if line.get("logger") == "gunicorn.access" and line.get("job_id") == job_id
        ]
    )
    assert access and all("trace_id" not in line for line in access)
    assert {line["path"] for line in access} == {"/v1/download/initiate", f"/v1/download/status/{job_id}"}
