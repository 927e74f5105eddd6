"""infra/prometheus and grafana/ checked with promtool and against the real Prometheus of the stack.

Needs `prometheus` and `promtool` (Debian package `prometheus`, installed by `make test` where
there is apt and root); without them these tests are skipped with that reason.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import datetime

import httpx
import pytest
import yaml

from dlkit.kit import ROOT
from grafana import config

from .support import available_ids, client_for, finished, initiate, wait_for_finished

PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
# The staging edge dashboard reads staging's ALB (CloudWatch) and Cloudflare exporter: no local
# stack has those (docs/monitoring-staging.md). Every other dashboard is queried live below.
STAGING_ONLY = "dlkit-staging-edge.json"
DASHBOARDS = sorted(p for p in (ROOT / "grafana" / "dashboards").glob("*.json") if p.name != STAGING_ONLY)

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None or shutil.which("prometheus") is None,
    reason="prometheus/promtool not installed (Debian package `prometheus`; `make test` installs it with apt as root)",
)


def promtool(*args: str) -> None:
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules():
    promtool("check", "rules", str(PROMETHEUS_DIR / "rules.yml"), str(PROMETHEUS_DIR / "alerts.yml"))


def test_promtool_test_rules():
    promtool("test", "rules", *map(str, sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))))


def test_promtool_check_config_compose(tmp_path):
    # The compose file mounts the rules at /etc/prometheus; check them where they are.
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text().replace("/etc/prometheus/", f"{PROMETHEUS_DIR}/")
    (tmp_path / "prometheus.yml").write_text(text)
    promtool("check", "config", str(tmp_path / "prometheus.yml"))


def test_promtool_check_config_local(stack):
    promtool("check", "config", str(stack.home / "prometheus" / "prometheus.yml"))


def test_every_alert_has_its_conventions():
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    runbook = (ROOT / "docs" / "runbook.md").read_text().lower()
    alerts = [rule for group in groups for rule in group["rules"]]
    assert alerts
    for rule in alerts:
        name = rule["alert"]
        assert name.startswith("Dlkit") and name.isidentifier() and name[0].isupper()
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        annotations = rule["annotations"]
        assert "{{" not in annotations["summary"], f"{name}: summary is fixed text"
        if "absent(" not in rule["expr"]:
            # An absence has no labels or value to state; every other description says what it saw.
            assert "{{" in annotations["description"], f"{name}: description is templated"
        assert annotations["runbook_url"] == config.runbook_url(name), f"{name}: runbook_url not from grafana/config.py"
        assert f"## {name.lower()}" in runbook, f"{name}: no runbook section"
    tested = (PROMETHEUS_DIR / "tests" / "alerts_test.yml").read_text()
    for name in {rule["alert"] for rule in alerts}:
        assert f"alertname: {name}" in tested, f"{name} has no promtool unit test"


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, expr) of every Prometheus panel target of every dashboard but the staging edge's."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                if target["datasource"]["type"] == "prometheus":
                    found.append((f"{path.name}: {panel['title']}", substitute(target["expr"])))
    return found


def substitute(expr: str) -> str:
    """A query as Grafana sends it with every variable of ours at "All" (`.*`); $__rate_interval
    as 1m, several scrapes of this stack."""
    return re.sub(r"\$(\w+)", lambda m: "1m" if m.group(1) == "__rate_interval" else ".*", expr)


def variable_queries() -> list[tuple[str, str, str]]:
    """(where, metric selector, label) of every `label_values(...)` template variable."""
    found = []
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] == "query":
                selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]).groups()
                found.append((f"{path.name}: ${variable['name']}", substitute(selector), label))
    return found


def recording_rules() -> list[tuple[str, str]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())["groups"]
    return [(f"rules.yml: {rule['record']}", rule["expr"]) for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def scraped(stack) -> httpx.Client:
    """A short load through the stack's entry; then Prometheus has scraped every target and
    evaluated every rule group after it."""
    prometheus = httpx.Client(base_url=stack.components["prometheus"].url, timeout=10)
    with client_for(stack, "alice") as alice:
        _load(stack, alice)
    loaded = time.time()
    deadline = time.monotonic() + 30
    scraped_at = None
    while True:  # bounded poll of Prometheus' own APIs: no fixed sleep
        if scraped_at is None:
            targets = prometheus.get("/api/v1/targets").raise_for_status().json()["data"]["activeTargets"]
            # Two scrapes after the load: rate() needs two samples of a series the load created.
            if targets and all(
                t["health"] == "up" and _epoch(t["lastScrape"]) > loaded + _seconds(t["scrapeInterval"])
                for t in targets
            ):
                scraped_at = time.time()
        else:
            groups = prometheus.get("/api/v1/rules").raise_for_status().json()["data"]["groups"]
            if groups and all(_epoch(g["lastEvaluation"]) > scraped_at for g in groups):
                break
        assert time.monotonic() < deadline, "Prometheus has not scraped twice and evaluated every rule since the load"
        time.sleep(0.2)
    yield prometheus
    prometheus.close()


def _load(stack, alice: httpx.Client) -> None:
    """Jobs that complete, one that fails, one cancelled, legacy synchronous calls, status polls,
    an unknown path. Waits on the metrics rather than polling: the API's rate limit is shared."""
    before = finished(stack)
    jobs = [initiate(alice, available_ids(2, start=80_000 + 70 * i)).json()["jobId"] for i in range(6)]
    jobs.append(initiate(alice, [80_001]).json()["jobId"])  # no available file: fails
    cancelled = initiate(alice, available_ids(40, start=81_000)).json()["jobId"]
    alice.post(f"/v1/download/cancel/{cancelled}")
    for _ in range(3):
        alice.post("/v1/download/start", json={"file_id": 80_003})  # legacy call, mostly 504 from the app
    wait_for_finished(stack, before + len(jobs) + 1)
    for job_id in jobs:
        alice.get(f"/v1/download/status/{job_id}")
    alice.get("/no/such/route")


def _seconds(duration: str) -> float:
    """A Prometheus duration as the API reports a scrape interval: "1s", "300ms", "1m"."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    number = duration.rstrip("smh")
    return float(number) * units[duration[len(number) :]]


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()  # Python 3.11 reads Prometheus' nanoseconds


@pytest.mark.parametrize(
    ("where", "expr"), [pytest.param(w, e, id=w) for w, e in dashboard_expressions() + recording_rules()]
)
def test_expression_parses_and_has_data(scraped, where, expr):
    r = scraped.get("/api/v1/query", params={"query": expr})
    assert r.status_code == 200, f"{where}: {r.text}"
    result = r.json()["data"]["result"]
    assert result, f"{where}: no data after the load: {expr}"


@pytest.mark.parametrize(("where", "selector", "label"), [pytest.param(*v, id=v[0]) for v in variable_queries()])
def test_template_variable_has_values(scraped, where, selector, label):
    r = scraped.get("/api/v1/series", params={"match[]": selector})
    assert r.status_code == 200, f"{where}: {r.text}"
    values = {series.get(label) for series in r.json()["data"]} - {None}
    assert values, f"{where}: no value of {label} in {selector}"
