"""grafana/dashboards against their generator (grafana/generate.py) and the alerts against the one
monitoring config (grafana/config.py). Static: no server. Live checks of every panel's query are in
tests/test_prometheus.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from dlkit.kit import ROOT
from grafana import config, generate

DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
RUNBOOK = ROOT / "docs" / "runbook.md"

# The 28 panels the four hand-written dashboards had (uid, title, unit): each keeps its meaning.
PANELS_BEFORE = {
    ("dlkit-service", "Requests per second by route", "reqps"),
    ("dlkit-service", "Error share (5xx) by route", "percentunit"),
    ("dlkit-service", "Answers by status", "reqps"),
    ("dlkit-service", "Latency p50 / p95 / p99 by route", "s"),
    ("dlkit-service", "Availability error ratio (SLO 99.9 %), 1h window", "percentunit"),
    ("dlkit-service", "API instances up", "short"),
    ("dlkit-jobs", "Throughput: initiated and finished per second", "ops"),
    ("dlkit-jobs", "Jobs by status (not yet finished)", "short"),
    ("dlkit-jobs", "Queue wait p50 / p95", "s"),
    ("dlkit-jobs", "Time to file p50 / p95 / p99", "s"),
    ("dlkit-jobs", "Oldest queued job", "s"),
    ("dlkit-jobs", "Failures by reason", "short"),
    ("dlkit-jobs", "Time-to-file error ratio (SLO 99 % within 150 s), 1h window", "percentunit"),
    ("dlkit-jobs", "Status polls per job initiated", "short"),
    ("dlkit-proxy-chain", "Outcomes by layer", "reqps"),
    ("dlkit-proxy-chain", "504 / 524 share by layer", "percentunit"),
    ("dlkit-proxy-chain", "502 by layer", "reqps"),
    ("dlkit-proxy-chain", "Synchronous vs polling calls (at the API)", "reqps"),
    ("dlkit-proxy-chain", "Synchronous calls answered 504 by the app itself", "percentunit"),
    ("dlkit-proxy-chain", "Synchronous call duration p95", "s"),
    ("dlkit-workers", "Busy workers", "short"),
    ("dlkit-workers", "Workers registered in Redis", "short"),
    ("dlkit-workers", "Jobs handled per worker by outcome", "ops"),
    ("dlkit-workers", "Heartbeat age", "s"),
    ("dlkit-workers", "Files processed by availability", "ops"),
    ("dlkit-workers", "Artifact bytes uploaded", "Bps"),
    ("dlkit-workers", "Run time p50 / p95", "s"),
    ("dlkit-workers", "Worker targets up", "short"),
}


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def walk(node, key: str):
    """Every value stored under `key` anywhere in a JSON document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook's headings (lower case, spaces to dashes, punctuation dropped)."""
    headings = re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_committed_json_is_the_generators_output():
    rendered = generate.render()
    assert sorted(rendered) == sorted(p.name for p in DASHBOARDS_DIR.glob("*.json")), "a dashboard without generator"
    for name, text in rendered.items():
        assert (DASHBOARDS_DIR / name).read_text() == text, f"{name}: run `python -m grafana.generate`"


def test_generator_check_mode_as_documented(tmp_path):
    """`python -m grafana.generate --check` (the command grafana/generate.py documents) fails on a
    stale copy and passes on a fresh one."""
    command = [sys.executable, "-m", "grafana.generate", "--out", str(tmp_path)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    assert subprocess.run([*command, "--check"], cwd=ROOT, capture_output=True).returncode == 0
    stale = tmp_path / "dlkit-jobs.json"
    stale.write_text(stale.read_text().replace("Oldest queued job", "Oldest job"))
    result = subprocess.run([*command, "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "dlkit-jobs.json" in result.stdout


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS_DIR.glob("*.json")))
def test_datasource_is_a_variable_with_an_import_input(name):
    board = dashboards()[name]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    datasource_vars = {n: v for n, v in variables.items() if v["type"] == "datasource"}
    assert datasource_vars, "no datasource variable"
    inputs = {i["name"]: i for i in board["__inputs"]}
    for variable in datasource_vars.values():
        # On import Grafana asks for each input and writes its uid where ${DS_...} stands.
        placeholder = re.fullmatch(r"\$\{(DS_\w+)\}", variable["current"]["value"]).group(1)
        assert inputs[placeholder]["type"] == "datasource" and inputs[placeholder]["pluginId"] == variable["query"]
    refs = list(walk(board, "datasource"))
    assert refs
    for ref in refs:
        if isinstance(ref, dict):  # a variable's own "datasource" is its plugin type, not a ref
            assert ref["uid"] in {f"${{{n}}}" for n in datasource_vars}, f"hard-coded datasource {ref}"
    assert not re.search(r'"uid": "(?!\$\{)[^"]*"', json.dumps(board).replace(f'"uid": "{board["uid"]}"', "")), (
        "a uid other than the dashboard's own that is not a variable"
    )


def test_every_old_panel_is_kept_and_every_panel_has_a_unit():
    panels = [(board["uid"], panel) for board in dashboards().values() for panel in board["panels"]]
    assert PANELS_BEFORE <= {(uid, p["title"], p["fieldConfig"]["defaults"]["unit"]) for uid, p in panels}
    for uid, panel in panels:
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{uid}: {panel['title']} has no unit"


def test_panels_with_a_bad_draw_it_and_link_to_runbook_and_alert():
    anchors = runbook_anchors()
    alerts = {rule["alert"] for rule in alert_rules()}
    with_bad = 0
    for board in dashboards().values():
        for panel in board["panels"]:
            where = f"{board['uid']}: {panel['title']}"
            steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            if len(steps) < 2:
                continue
            with_bad += 1
            if panel["type"] == "timeseries":
                assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off", where
            for link in panel.get("links", []):
                url = link["url"]
                assert url.startswith(("https://", "/alerting/")), f"{where}: relative link {url}"
                if url.startswith(config.RUNBOOK_BASE_URL):
                    assert url.split("#")[1] in anchors, f"{where}: no runbook section {url}"
                if url.startswith("/alerting/"):
                    assert url.split("search=")[1] in alerts, f"{where}: no alert {url}"
    assert with_bad >= 20


def test_dashboards_link_each_other_the_runbook_and_the_rules():
    for board in dashboards().values():
        links = board["links"]
        assert any(link["type"] == "dashboards" and link["tags"] == ["dlkit"] for link in links)
        urls = {link["url"] for link in links if link["type"] == "link"}
        assert {config.RUNBOOK_BASE_URL, config.ALERTS_URL, config.RULES_URL} <= urls


def test_slo_dashboard_shows_budget_and_every_burn_window():
    board = dashboards()["dlkit-slo.json"]
    exprs = " ".join(walk(board["panels"], "expr"))
    for sli in ("route:dlkit_http_requests:error_ratio_rate", ":dlkit_job_time_to_file:error_ratio_rate"):
        for long_window, short_window, _, _ in config.BURN_WINDOWS:
            assert f"{sli}{long_window}" in exprs and f"{sli}{short_window}" in exprs
        assert f"{sli}{config.SLO_WINDOW}" in exprs
    assert "dlkit_redis_up" in json.dumps(dashboards()["dlkit-service.json"])


def test_every_runbook_url_is_absolute_from_the_one_setting():
    anchors = runbook_anchors()
    wrong = [
        f"{rule['alert']}: {rule['annotations']['runbook_url']}"
        for rule in alert_rules()
        if not rule["annotations"]["runbook_url"].startswith(config.RUNBOOK_BASE_URL + "#")
        or rule["annotations"]["runbook_url"].split("#")[1] not in anchors
    ]
    assert not wrong, f"not {config.RUNBOOK_BASE_URL}#<a section of docs/runbook.md>: {wrong}"


def test_burn_rate_alerts_follow_the_configured_windows():
    for alert, ratio, objective in (
        ("DlkitApiErrorBudgetBurn", "route:dlkit_http_requests:error_ratio_rate", config.AVAILABILITY_OBJECTIVE),
        ("DlkitTimeToFileErrorBudgetBurn", ":dlkit_job_time_to_file:error_ratio_rate", config.TIME_TO_FILE_OBJECTIVE),
    ):
        rules = {r["labels"]["window"]: r for r in alert_rules() if r["alert"] == alert}
        assert sorted(rules) == sorted(w[0] for w in config.BURN_WINDOWS)
        for long_window, short_window, rate, severity in config.BURN_WINDOWS:
            rule = rules[long_window]
            budget = round(1 - objective, 6)
            assert rule["labels"]["severity"] == severity
            for window in (long_window, short_window):
                assert f"{ratio}{window} > ({rate:g} * {budget:g})" in rule["expr"], (alert, window)
    recorded = {
        r["record"] for g in yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())["groups"] for r in g["rules"]
    }
    for long_window, short_window, _, _ in config.BURN_WINDOWS:
        for window in (long_window, short_window):
            assert f"route:dlkit_http_requests:error_ratio_rate{window}" in recorded
            assert f":dlkit_job_time_to_file:error_ratio_rate{window}" in recorded


def test_aggregations_keep_their_labels():
    """An aggregation without `by`/`without` drops job, instance and any environment label: none in
    the alerts, and no max/min in the recording rules (the SLIs sum the whole service on purpose)."""
    bare = r"\b{op}\s*\("
    for rule in alert_rules():
        for op in ("sum", "max", "min", "avg", "count"):
            assert not re.search(bare.format(op=op), rule["expr"]), f"{rule['alert']}: bare {op}()"
    for group in yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())["groups"]:
        for rule in group["rules"]:
            for op in ("max", "min"):
                assert not re.search(bare.format(op=op), rule["expr"]), f"{rule['record']}: bare {op}()"


def test_proxy_timeout_alert_leaves_out_the_legacy_route():
    rule = next(r for r in alert_rules() if r["alert"] == "DlkitProxyTimeouts")
    assert f'route!="{config.LEGACY_PROXY_ROUTE}"' in rule["expr"] and "by (layer, route)" in rule["expr"]


def test_the_generator_library_stays_out_of_the_runtime_image():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("grafana") for dep in project["dependencies"])
    assert any(dep.startswith("grafana-foundation-sdk") for dep in project["optional-dependencies"]["monitoring"])
