"""The /metrics of the API (gunicorn, multiprocess) and of the RQ workers, read from the real stack."""

from __future__ import annotations

import re
import signal
import socket
import textwrap
import time

import boto3
import httpx
import psutil
import pytest
from botocore.stub import Stubber
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import StorageCollector
from dlkit.kit import ROOT
from dlkit.storage import s3_client

from .support import api_url, available_ids, finished, initiate, scrape, total, value, wait_for_finished, worker_urls

pytestmark = pytest.mark.stack

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Labels whose values come from fixed sets; anything else is a cardinality bug.
BOUNDED_LABELS = {"route", "method", "status", "reason", "outcome", "result", "state", "le"}
MAX_VALUES_PER_LABEL = 30


def wait_until_idle(stack, timeout_s: float = 30) -> None:
    """Until no job is queued or processing (jobs of earlier tests would move the counters)."""
    deadline = time.monotonic() + timeout_s
    while value(scrape(api_url(stack)), "dlkit_jobs") > 0:
        assert time.monotonic() < deadline, "jobs of earlier tests still running"
        time.sleep(0.1)


def test_names_follow_conventions_and_labels_are_bounded(stack, make_app, alice):
    # Traffic that could leak ids or paths into labels: job ids in URLs, unknown paths.
    wait_until_idle(stack)
    before = finished(stack)
    job_id = initiate(alice, available_ids(2)).json()["jobId"]
    wait_for_finished(stack, before + 1)
    alice.get(f"/v1/download/status/{job_id}")
    alice.get(f"/v1/download/{job_id}")
    alice.get("/no/such/path/12345")

    with httpx.Client() as client:
        texts = [client.get(url).raise_for_status().text for url in [api_url(stack), *worker_urls(stack)]]
    routes = {rule.rule for rule in make_app().url_map.iter_rules()} | {"unmatched"}
    values_per_label: dict[str, set[str]] = {}
    ours = 0
    for text in texts:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("dlkit_"):
                continue  # prometheus-client's own process_* and python_* metrics (single-process only)
            ours += 1
            assert re.fullmatch(r"dlkit_[a-z0-9_]+", family.name)
            if family.type == "counter":
                assert all(s.name.endswith("_total") for s in family.samples), family.name
            if family.type == "histogram":
                assert family.name.endswith(("_seconds", "_bytes")), f"{family.name}: histograms carry a base unit"
            if {"duration", "age", "wait"} & set(family.name.split("_")):  # words: not the "age" of "storage"
                assert family.name.endswith("_seconds"), family.name
            for sample in family.samples:
                for label, label_value in sample.labels.items():
                    assert label in BOUNDED_LABELS, f"{family.name}: unexpected label {label}"
                    assert not UUID.search(label_value), f"{family.name}: an id in label {label}"
                    values_per_label.setdefault(label, set()).add(label_value)
                if "route" in sample.labels:
                    assert sample.labels["route"] in routes, f"not a route template: {sample.labels['route']}"
    assert ours >= 15
    for label, seen in values_per_label.items():
        assert len(seen) <= MAX_VALUES_PER_LABEL, f"{label} has {len(seen)} values: {sorted(seen)}"
    assert "/v1/download/status/<job_id>" in values_per_label["route"]
    assert "unmatched" in values_per_label["route"]


def test_job_transitions_are_counted_once(stack, alice):
    """Completed in the work horse, cancelled in the API: each job once, a repeated cancel not again."""
    urls = [api_url(stack), *worker_urls(stack)]
    wait_until_idle(stack)
    before_completed = total(urls, "dlkit_jobs_finished_total", status="completed")
    before_cancelled = total(urls, "dlkit_jobs_finished_total", status="cancelled")
    before_initiated = total(urls, "dlkit_jobs_initiated_total")
    before_handled = total(worker_urls(stack), "dlkit_worker_jobs_total")
    before_all = finished(stack)

    for i in range(3):
        initiate(alice, available_ids(1, start=71_000 + 70 * i))
    wait_for_finished(stack, before_all + 3)
    # Many files: the job is still running (or queued) when cancelled, and cancelled twice.
    cancelled = initiate(alice, available_ids(50, start=72_000)).json()["jobId"]
    for _ in range(2):
        assert alice.post(f"/v1/download/cancel/{cancelled}").status_code == 200

    assert total(urls, "dlkit_jobs_initiated_total") == before_initiated + 4
    assert total(urls, "dlkit_jobs_finished_total", status="completed") == before_completed + 3
    assert total(urls, "dlkit_jobs_finished_total", status="cancelled") == before_cancelled + 1
    # The work horses that ran those jobs are gone; what they counted is still served.
    assert total(worker_urls(stack), "dlkit_worker_jobs_total") >= before_handled + 3


def test_worker_metric_files_stay_bounded(stack, alice):
    """Each horse's files are folded into the worker's archive after its job: no file per job."""
    before = finished(stack)
    for i in range(4):
        initiate(alice, available_ids(1, start=73_000 + 70 * i))
    wait_for_finished(stack, before + 4)
    for name in (n for n in stack.components if n.startswith("worker-")):
        directory = stack.home / "metrics" / name
        # The worker's own counter and histogram files, plus one archive of each. Bounded wait: the
        # last horse may still be exiting when its job is already counted.
        deadline = time.monotonic() + 10
        while len(files := sorted(p.name for p in directory.glob("*.db"))) > 4:
            assert time.monotonic() < deadline, files
            time.sleep(0.1)


def test_killing_a_gunicorn_worker_neither_loses_nor_doubles_counters(stack):
    url = api_url(stack)
    health = f"http://127.0.0.1:{stack.ports['api']}/health"
    with httpx.Client() as client:
        for _ in range(10):  # spread over the gunicorn workers
            client.get(health).raise_for_status()
    before = value(scrape(url), "dlkit_http_requests_total", route="/health", status="200")

    master = psutil.Process(stack.components["api"].pid)
    workers = master.children()
    assert len(workers) >= 2
    victim = workers[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    deadline = time.monotonic() + 30
    while len([w for w in master.children() if w.pid != victim.pid]) < len(workers):
        assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
        time.sleep(0.1)  # gunicorn's arbiter has no readiness signal to await; bounded poll
    assert value(scrape(url), "dlkit_http_requests_total", route="/health", status="200") == before

    with httpx.Client() as client:
        for _ in range(10):
            client.get(health).raise_for_status()
    assert value(scrape(url), "dlkit_http_requests_total", route="/health", status="200") == before + 10


def test_metrics_are_not_rate_limited(stack):
    with httpx.Client() as client:
        for _ in range(3):
            r = client.get(api_url(stack))
            assert r.status_code == 200
            assert "RateLimit-Remaining" not in r.headers  # the limiter does not count it


def test_redis_and_storage_up_say_what_the_api_reaches(stack, settings):
    # On the live stack both dependencies answer.
    samples = scrape(api_url(stack))
    assert value(samples, "dlkit_redis_up") == 1
    assert value(samples, "dlkit_storage_up") == 1
    # A store that refuses connections: the same HEAD bucket as /health, one attempt, reads 0.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{unused.getsockname()[1]}"  # bound, never listening: refused
        down = s3_client(settings.model_copy(update={"S3_ENDPOINT": closed}), max_attempts=1)
        registry = CollectorRegistry()
        registry.register(StorageCollector(down, settings.S3_BUCKET_NAME))
        assert b"dlkit_storage_up 0.0" in generate_latest(registry)
        down.close()


def test_the_autoscaling_signal_is_the_api_gauge(slow, workers_stopped, monkeypatch):
    """The staging queue-depth task, its Python run as Terraform ships it, publishes the number the API
    exports as dlkit_jobs{status="queued"}. CloudWatch is not reachable here: botocore's Stubber takes
    the call and checks its parameters."""
    hcl = (ROOT / "infra" / "terraform" / "services.tf").read_text()
    script = textwrap.dedent(re.search(r"queue_depth_script = <<-PY\n(.*?)\n\s*PY\n", hcl, re.S).group(1))
    script = script.replace("${var.environment}", "test")
    for name, setting in slow.stack.client_env().items():
        monkeypatch.setenv(name, setting)
    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    monkeypatch.setattr(boto3, "client", lambda service: cloudwatch)
    with slow.client() as alice:
        jobs = [initiate(alice, [70000]).json()["jobId"] for _ in range(3)]
        try:
            gauge = value(scrape(api_url(slow.stack)), "dlkit_jobs", status="queued")
            metric = {"MetricName": "QueueDepth", "Value": gauge, "Unit": "Count"}
            metric["Dimensions"] = [{"Name": "Environment", "Value": "test"}]
            with Stubber(cloudwatch) as stub:
                stub.add_response("put_metric_data", {}, expected_params={"Namespace": "dlkit", "MetricData": [metric]})
                exec(compile(script, "services.tf: queue_depth_script", "exec"), {})
                stub.assert_no_pending_responses()
            assert gauge == 3
        finally:
            for job_id in jobs:
                alice.post(f"/v1/download/cancel/{job_id}")
