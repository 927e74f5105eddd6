"""Exemplars (dlkit/exemplars.py): a traced job's trace id on the histogram buckets of the API's and the
worker's /metrics in the OpenMetrics format, and in the real Prometheus that the kit starts with
exemplar storage; none, and no exemplar file, when tracing is off. The merge logic on its own first."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from dlkit import exemplars, multiproc
from dlkit.kit import ROOT

from .support import api_url, available_ids, client_for, eventually, initiate, poll, worker_urls

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


# --- the merge, as pure logic ----------------------------------------------------------------------


def _row(trace_id: str, value: float, at: float, le: str = "0.5", route: str = "/a") -> list:
    return ["dlkit_x_seconds", {"route": route, "method": "GET"}, le, trace_id, value, at]


def test_the_newest_exemplar_of_any_process_wins_per_bucket():
    found = exemplars.newest(
        [_row("old", 0.3, 100.0), _row("new", 0.4, 200.0), _row("older", 0.2, 50.0), _row("b", 0.9, 10.0, le="1.0")]
    )
    labels = (("method", "GET"), ("route", "/a"))
    assert found == {
        ("dlkit_x_seconds", labels, "0.5"): ("new", 0.4, 200.0),
        ("dlkit_x_seconds", labels, "1.0"): ("b", 0.9, 10.0),
    }


def test_exemplars_go_on_their_own_bucket_and_labels_only():
    family = HistogramMetricFamily("dlkit_x_seconds", "x", labels=["route", "method"])
    family.add_metric(["/a", "GET"], buckets=[("0.5", 1), ("1.0", 2), ("+Inf", 2)], sum_value=1.3)
    family.add_metric(["/b", "GET"], buckets=[("0.5", 1), ("1.0", 1), ("+Inf", 1)], sum_value=0.4)
    found = exemplars.newest([_row("t1", 0.4, 100.0), _row("t2", 0.9, 100.0, le="1.0")])
    (out,) = exemplars.attach([family], found)
    marked = {
        (s.labels["route"], s.labels["le"]): s.exemplar.labels["trace_id"]
        for s in out.samples
        if s.exemplar is not None
    }
    assert marked == {("/a", "0.5"): "t1", ("/a", "1.0"): "t2"}
    assert all(s.exemplar is None for s in out.samples if not s.name.endswith("_bucket"))


def test_fold_keeps_the_newest_and_removes_the_dead_files(tmp_path):
    (tmp_path / "exemplars_11.json").write_text(json.dumps([_row("dead-old", 0.3, 100.0)]))
    (tmp_path / "exemplars_12.json").write_text(json.dumps([_row("dead-new", 0.4, 200.0)]))
    (tmp_path / "exemplars_99.json").write_text(json.dumps([_row("live", 0.2, 50.0)]))
    exemplars.fold(str(tmp_path), keep_pid=99)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exemplars_99.json", "exemplars_archive.json"]
    rows = exemplars.read([str(tmp_path / "exemplars_archive.json")])
    assert [row[3] for row in rows] == ["dead-new"]
    # Folding again, with nothing dead, changes nothing.
    exemplars.fold(str(tmp_path), keep_pid=99)
    assert exemplars.read([str(tmp_path / "exemplars_archive.json")]) == rows


def test_a_new_run_starts_without_the_previous_runs_exemplars(tmp_path):
    for name in (
        "exemplars_11.json",
        "exemplars_archive.json",
        "exemplars_11.json.11.tmp",
        "counter_11.db",
        "notes.txt",
    ):
        (tmp_path / name).write_text("[]")
    multiproc.remove_previous_run(str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# --- the real stack --------------------------------------------------------------------------------


def _bucket_exemplars(url: str, metric: str) -> list[tuple[dict, str]]:
    """(labels, trace id) of every bucket of `metric` that carries an exemplar, as Prometheus would
    scrape it (OpenMetrics)."""
    response = httpx.get(url, headers={"Accept": OPENMETRICS}, timeout=5).raise_for_status()
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    return [
        (sample.labels, sample.exemplar.labels["trace_id"])
        for family in text_string_to_metric_families(response.text)
        if family.name == metric
        for sample in family.samples
        if sample.name == f"{metric}_bucket" and sample.exemplar is not None
    ]


def _trace_ids(spans_file: Path) -> set[str]:
    if not spans_file.exists():
        return set()
    ids = set()
    for line in spans_file.read_text().splitlines():
        try:
            ids.add(json.loads(line)["context"]["trace_id"].removeprefix("0x"))
        except (json.JSONDecodeError, KeyError):
            pass
    return ids


@pytest.mark.stack
def test_a_traced_job_leaves_its_trace_id_on_the_buckets(traced):
    with client_for(traced, "alice") as client:
        response = initiate(client, available_ids(2))
        trace_id = response.headers["traceresponse"].split("-")[1]
        assert poll(client, response.json()["jobId"])[-1]["status"] == "completed"

    # The API: the initiate request's own bucket.
    api = eventually(
        lambda: [
            found
            for labels, found in _bucket_exemplars(api_url(traced), "dlkit_http_request_duration_seconds")
            if labels["route"] == "/v1/download/initiate" and found == trace_id
        ]
    )
    assert api, f"no exemplar with trace {trace_id} on the initiate route's buckets"
    # The worker (its work horse wrote them, the worker folded the horse's file): the job's trace.
    (worker,) = worker_urls(traced)
    for metric in ("dlkit_job_run_seconds", "dlkit_job_time_to_file_seconds", "dlkit_job_queue_wait_seconds"):
        # The job is completed in Redis a moment before its horse writes them.
        assert eventually(lambda m=metric: trace_id in {found for _, found in _bucket_exemplars(worker, m)}), metric
    metrics_dir = traced.home / "metrics" / "worker-1"
    assert eventually(lambda: not list(metrics_dir.glob("exemplars_[0-9]*.json"))), "horse files not folded"
    assert (metrics_dir / "exemplars_archive.json").exists()
    # A trace that is recorded: the spans file holds it.
    assert eventually(lambda: trace_id in _trace_ids(traced.home / "spans.jsonl")), "trace not in the spans file"

    # The Prometheus text format (no exemplars there) is unchanged for a scraper that does not ask.
    plain = httpx.get(api_url(traced), timeout=5).raise_for_status()
    assert plain.headers["Content-Type"].startswith("text/plain")
    assert trace_id not in plain.text and "# EOF" not in plain.text


@pytest.mark.stack
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (Debian package)")
def test_prometheus_stores_the_exemplars(traced):
    with client_for(traced, "alice") as client:
        response = initiate(client, available_ids(1, start=71_000))
        trace_id = response.headers["traceresponse"].split("-")[1]
        assert poll(client, response.json()["jobId"])[-1]["status"] == "completed"
    prometheus = httpx.Client(base_url=traced.components["prometheus"].url, timeout=10)

    def stored(metric: str) -> set[str]:
        now = time.time()
        data = (
            prometheus.get("/api/v1/query_exemplars", params={"query": metric, "start": now - 600, "end": now + 60})
            .raise_for_status()
            .json()["data"]
        )
        return {exemplar["labels"]["trace_id"] for series in data for exemplar in series["exemplars"]}

    with prometheus:
        for metric in ("dlkit_job_time_to_file_seconds_bucket", "dlkit_http_request_duration_seconds_bucket"):
            assert eventually(lambda m=metric: trace_id in stored(m)), (
                f"Prometheus has no exemplar of {trace_id} on {metric}"
            )


@pytest.mark.stack
def test_tracing_off_no_exemplars_and_no_files(stack):
    with client_for(stack, "alice") as client:
        response = initiate(client, available_ids(1, start=72_000))
        assert "traceresponse" not in response.headers
        assert poll(client, response.json()["jobId"])[-1]["status"] == "completed"
    for url, metric in [
        (api_url(stack), "dlkit_http_request_duration_seconds"),
        *[(url, "dlkit_job_run_seconds") for url in worker_urls(stack)],
    ]:
        assert _bucket_exemplars(url, metric) == [], url
    assert not list((stack.home / "metrics").glob("*/exemplars_*")), "exemplar files written with tracing off"


# --- Grafana: the points lead to Jaeger ----------------------------------------------------------


def test_grafana_shows_exemplars_and_sends_their_trace_ids_to_jaeger():
    provisioning = ROOT / "grafana" / "provisioning" / "datasources"
    datasources = {
        source["uid"]: source
        for path in provisioning.glob("*.yml")
        for source in yaml.safe_load(path.read_text())["datasources"]
    }
    (destination,) = datasources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["name"] == "trace_id"  # the exemplar label dlkit/exemplars.py writes
    assert datasources[destination["datasourceUid"]]["type"] == "jaeger"
    board = json.loads((ROOT / "grafana" / "dashboards" / "dlkit-jobs.json").read_text())
    with_exemplars = {
        panel["title"] for panel in board["panels"] if any(t.get("exemplar") for t in panel.get("targets", []))
    }
    assert with_exemplars == {"Queue wait p50 / p95", "Time to file p50 / p95 / p99"}
    assert any(link.get("url", "").startswith("http://127.0.0.1:16686/search?") for link in board["links"])
