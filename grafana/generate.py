"""Writes the dashboards of grafana/dashboards/ from Python, with Grafana's own SDK
(grafana-foundation-sdk, generated from Grafana's schema). The JSON is committed;
tests/test_dashboards.py checks it equals what this writes.

    python -m grafana.generate          # rewrite grafana/dashboards/*.json
    python -m grafana.generate --check  # exit 1 if the committed JSON differs

Every Prometheus query goes to the `datasource` variable (no datasource uid is written down), whose
default comes from `__inputs` when the JSON is imported; the staging dashboard's CloudWatch panels
go to a `cloudwatch` variable the same way. Thresholds and links come from grafana/config.py, the
settings the alerts share.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import cloudwatch, common, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as build
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import cloudwatch as cw_model
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as model

from grafana import config

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"

PROMETHEUS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
CLOUDWATCH = model.DataSourceRef(type_val="cloudwatch", uid="${cloudwatch}")
INPUTS = {
    "prometheus": {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "description": "Prometheus scraping dlkit",
        "type": "datasource",
        "pluginId": "prometheus",
        "pluginName": "Prometheus",
    },
    "cloudwatch": {
        "name": "DS_CLOUDWATCH",
        "label": "CloudWatch",
        "description": "CloudWatch of the staging account",
        "type": "datasource",
        "pluginId": "cloudwatch",
        "pluginName": "CloudWatch",
    },
}
RATE = "$__rate_interval"
HTTP = "dlkit_http_requests_total"
CLOUDFLARE = "cloudflare_zone_requests_status"  # lablabs/cloudflare-exporter: requests by zone and edge status
SLO_ROUTES = "|".join(config.SLO_ROUTES)
EXEMPLARS = "The dots are exemplars: one traced job per bucket; click one for its trace (service dlkit-worker)."


@dataclass(frozen=True)
class Bad:
    """What "bad" is on a panel: a threshold line at `value` (red above, or below with below=True),
    and the alert that fires on it, whose runbook section and rule the panel links to."""

    value: float | None = None
    alert: str | None = None
    below: bool = False
    warn: float | None = None


@dataclass(frozen=True)
class Q:
    expr: str
    legend: str
    # Also ask Prometheus for the exemplars of the histogram under the query: a dot per traced
    # observation, whose trace_id opens the trace in Jaeger (the datasource's exemplarTraceIdDestinations).
    exemplars: bool = False


def _links(bad: Bad | None) -> list[build.DashboardLink]:
    if bad is None or bad.alert is None:
        return []
    return [
        build.DashboardLink(f"Runbook: {bad.alert}").url(config.runbook_url(bad.alert)).target_blank(True),
        build.DashboardLink(f"Alert {bad.alert} in Grafana").url(f"/alerting/list?search={bad.alert}"),
        build.DashboardLink("Alert rules (alerts.yml)").url(config.ALERTS_URL).target_blank(True),
    ]


def _thresholds(bad: Bad | None) -> build.ThresholdsConfig:
    if bad is None or bad.value is None:
        steps = [model.Threshold(value=None, color="green")]
    elif bad.below:  # e.g. "up": red at 0, green from the value on
        steps = [model.Threshold(value=None, color="red"), model.Threshold(value=bad.value, color="green")]
    else:
        steps = [model.Threshold(value=None, color="green")]
        if bad.warn is not None:
            steps.append(model.Threshold(value=bad.warn, color="orange"))
        steps.append(model.Threshold(value=bad.value, color="red"))
    return build.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)


def _targets(queries: list[Q], datasource=PROMETHEUS) -> list[prometheus.Dataquery]:
    targets = []
    for i, q in enumerate(queries):
        target = prometheus.Dataquery().ref_id(chr(ord("A") + i)).datasource(datasource).expr(q.expr)
        if q.exemplars:
            target = target.exemplar(True)
        targets.append(target.legend_format(q.legend))
    return targets


def graph(
    title: str,
    unit: str,
    queries: list[Q],
    *,
    bad: Bad | None = None,
    description: str = "",
    soft_max: float | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .targets(_targets(queries))
        .thresholds(_thresholds(bad))
        .links(_links(bad))
    )
    if bad is not None and bad.value is not None:
        style = common_model.GraphThresholdsStyleMode.DASHED
        panel = panel.thresholds_style(common.GraphThresholdsStyleConfig().mode(style))
    if soft_max is not None:
        panel = panel.axis_soft_max(soft_max)
    return panel


def single(
    title: str,
    unit: str,
    queries: list[Q],
    *,
    bad: Bad | None = None,
    description: str = "",
    mappings: dict[str, tuple[str, str]] | None = None,
    decimals: float | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .targets(_targets(queries))
        .thresholds(_thresholds(bad))
        .links(_links(bad))
        .color_mode(common_model.BigValueColorMode.BACKGROUND)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if mappings:
        options = {
            value: model.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, (text, color)) in enumerate(mappings.items())
        }
        panel = panel.mappings([model.ValueMap(options=options)])
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


UP_DOWN = {"0": ("down", "red"), "1": ("up", "green")}


def query_variable(name: str, label: str, query: str) -> build.QueryVariable:
    """A multi-value filter; "All" is `.*`, which also matches series that lack the label."""
    return (
        build.QueryVariable(name)
        .label(label)
        .datasource(PROMETHEUS)
        .query(query)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(model.VariableOption(selected=True, text="All", value="$__all"))
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list,
    variables: list = (),
    datasources: tuple[str, ...] = ("prometheus",),
    links: list[build.DashboardLink] = (),
) -> dict:
    """The dashboard as Grafana's JSON model: panels two to a row, ids in order, the datasource
    variables first (each defaulting to its `__inputs` entry), dashboard links to the other dlkit
    dashboards, the runbook and the rule files."""
    board = (
        build.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["dlkit"])
        .timezone("browser")
        .readonly()
        .refresh("30s")
        .time("now-1h", "now")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .link(
            build.DashboardLink("dlkit dashboards")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags(["dlkit"])
            .as_dropdown(True)
            .keep_time(True)
            .include_vars(False)
        )
        .link(build.DashboardLink("Runbook").url(config.RUNBOOK_BASE_URL).icon("doc").target_blank(True))
        .link(build.DashboardLink("Alert rules").url(config.ALERTS_URL).icon("bolt").target_blank(True))
        .link(build.DashboardLink("Recording rules").url(config.RULES_URL).icon("doc").target_blank(True))
    )
    for link in links:
        board = board.link(link)
    for kind in datasources:
        name = "datasource" if kind == "prometheus" else kind
        board = board.with_variable(
            build.DatasourceVariable(name)
            .label(INPUTS[kind]["label"])
            .type(kind)
            .current(
                model.VariableOption(selected=True, text=INPUTS[kind]["label"], value=f"${{{INPUTS[kind]['name']}}}")
            )
        )
    if "prometheus" in datasources:
        board = board.with_variable(
            build.AdHocVariable("filters")
            .label("Filters")
            .datasource(PROMETHEUS)
            .description("Label filters added to every Prometheus query: environment, cluster, ...")
        )
    for variable in variables:
        board = board.with_variable(variable)
    for i, panel in enumerate(panels):
        board = board.with_panel(panel.id(i + 1).grid_pos(model.GridPos(h=8, w=12, x=12 * (i % 2), y=8 * (i // 2))))
    data = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return {"__inputs": [INPUTS[kind] for kind in datasources], **data}


# --- the dashboards ------------------------------------------------------------------------------


def service() -> dict:
    sel = 'instance=~"$instance", route=~"$route"'
    return dashboard(
        "dlkit-service",
        "dlkit / service overview (RED per route)",
        "Rate, errors and duration of every API route (route = URL rule template), and what the API depends on.",
        [
            graph(
                "Requests per second by route",
                "reqps",
                [Q(f"sum by (route) (rate({HTTP}{{{sel}}}[{RATE}]))", "{{route}}")],
            ),
            graph(
                "Error share (5xx) by route",
                "percentunit",
                [
                    Q(
                        f'(sum by (route) (rate({HTTP}{{{sel}, status=~"5.."}}[{RATE}])) '
                        f"or 0 * sum by (route) (rate({HTTP}{{{sel}}}[{RATE}]))) "
                        f"/ sum by (route) (rate({HTTP}{{{sel}}}[{RATE}]))",
                        "{{route}}",
                    )
                ],
                bad=Bad(1 - config.AVAILABILITY_OBJECTIVE, "DlkitApiErrorBudgetBurn"),
                description=f"Above the dashed line a route spends error budget faster than the SLO "
                f"({config.AVAILABILITY_OBJECTIVE:.1%}) allows. `{config.LEGACY_ROUTE}` "
                "answers 504 by design: it is the problem the kit reproduces.",
            ),
            graph("Answers by status", "reqps", [Q(f"sum by (status) (rate({HTTP}{{{sel}}}[{RATE}]))", "{{status}}")]),
            graph(
                "Latency p50 / p95 / p99 by route",
                "s",
                [
                    Q(
                        f"histogram_quantile({q}, sum by (route, le) "
                        f"(rate(dlkit_http_request_duration_seconds_bucket{{{sel}}}[{RATE}])))",
                        f"p{int(q * 100)} {{{{route}}}}",
                        exemplars=q == 0.5,  # one query's are enough: every quantile has the same
                    )
                    for q in (0.5, 0.95, 0.99)
                ],
                description="The dots are exemplars: one traced request per bucket; click one for its trace.",
            ),
            graph(
                "Availability error ratio (SLO 99.9 %), 1h window",
                "percentunit",
                [Q('route:dlkit_http_requests:error_ratio_rate1h{route=~"$route"}', "{{route}}")],
                bad=Bad(
                    14.4 * (1 - config.AVAILABILITY_OBJECTIVE),
                    "DlkitApiErrorBudgetBurn",
                    warn=1 - config.AVAILABILITY_OBJECTIVE,
                ),
                description="Orange: the budget's rate (0.1 %); red: the 1h page threshold (14.4x).",
            ),
            single(
                "API instances up", "short", [Q('sum(up{job="api"})', "up")], bad=Bad(1, "DlkitApiAbsent", below=True)
            ),
            single(
                "Redis and S3 as each API instance sees them",
                "short",
                [
                    Q('dlkit_redis_up{instance=~"$instance"}', "redis {{instance}}"),
                    Q('dlkit_storage_up{instance=~"$instance"}', "s3 {{instance}}"),
                ],
                bad=Bad(1, "DlkitRedisDown", below=True),
                mappings=UP_DOWN,
                description="dlkit_redis_up and dlkit_storage_up, read when Prometheus scrapes the API. "
                "Runbook: DlkitRedisDown, DlkitStorageDown.",
            ),
            graph(
                "Scrape targets down by job",
                "short",
                [Q('sum by (job) (1 - up{job=~"$job"})', "{{job}}")],
                bad=Bad(1, "DlkitScrapeTargetDown"),
                soft_max=1,
                description="Targets Prometheus could not scrape at its last attempt.",
            ),
        ],
        [
            query_variable("job", "Scrape job", "label_values(up, job)"),
            query_variable("instance", "API instance", f"label_values({HTTP}, instance)"),
            query_variable("route", "Route", f'label_values({HTTP}{{instance=~"$instance"}}, route)'),
        ],
    )


def jobs() -> dict:
    ttf = "dlkit_job_time_to_file_seconds_bucket"
    return dashboard(
        "dlkit-jobs",
        "dlkit / jobs",
        "The async jobs: throughput, states, queue wait, time to file, failures.",
        [
            graph(
                "Throughput: initiated and finished per second",
                "ops",
                [
                    Q(f"sum(rate(dlkit_jobs_initiated_total[{RATE}]))", "initiated"),
                    Q(f"sum by (status) (rate(dlkit_jobs_finished_total[{RATE}]))", "{{status}}"),
                ],
            ),
            graph("Jobs by status (not yet finished)", "short", [Q("max by (status) (dlkit_jobs)", "{{status}}")]),
            graph(
                "Queue wait p50 / p95",
                "s",
                [
                    Q(
                        f"histogram_quantile({q}, sum by (le) (rate(dlkit_job_queue_wait_seconds_bucket[{RATE}])))",
                        f"p{int(q * 100)}",
                        exemplars=q == 0.5,
                    )
                    for q in (0.5, 0.95)
                ],
                bad=Bad(config.QUEUE_AGE_BAD_SECONDS, "DlkitQueueBackingUp"),
                description=EXEMPLARS,
            ),
            graph(
                "Time to file p50 / p95 / p99",
                "s",
                [
                    Q(f"histogram_quantile({q}, sum by (le) (rate({ttf}[{RATE}])))", f"p{int(q * 100)}", q == 0.5)
                    for q in (0.5, 0.95, 0.99)
                ],
                bad=Bad(config.TIME_TO_FILE_SECONDS, "DlkitTimeToFileErrorBudgetBurn"),
                description=f"The SLO: {config.TIME_TO_FILE_OBJECTIVE:.0%} of jobs deliver within "
                f"{config.TIME_TO_FILE_SECONDS} s (the dashed line). {EXEMPLARS}",
            ),
            graph(
                "Oldest queued job",
                "s",
                [Q("max without (instance) (dlkit_queue_oldest_job_age_seconds)", "age")],
                bad=Bad(config.QUEUE_AGE_BAD_SECONDS, "DlkitQueueBackingUp"),
            ),
            graph(
                "Failures by reason",
                "short",
                [Q(f"sum by (reason) (increase(dlkit_job_failures_total[{RATE}]))", "{{reason}}")],
                description="`no_files_available` is the client's (no requested file exists); the others are ours.",
            ),
            graph(
                "Time-to-file error ratio (SLO 99 % within 150 s), 1h window",
                "percentunit",
                [Q(":dlkit_job_time_to_file:error_ratio_rate1h", "ratio")],
                bad=Bad(
                    14.4 * (1 - config.TIME_TO_FILE_OBJECTIVE),
                    "DlkitTimeToFileErrorBudgetBurn",
                    warn=1 - config.TIME_TO_FILE_OBJECTIVE,
                ),
            ),
            graph(
                "Status polls per job initiated",
                "short",
                [Q(":dlkit_status_polls_per_job:ratio_rate5m", "polls/job")],
                description="A client honouring Retry-After makes about (job duration / poll interval) of them.",
            ),
            graph(
                "Processing job with the oldest heartbeat",
                "s",
                [Q("max without (instance) (dlkit_jobs_processing_max_heartbeat_age_seconds)", "age")],
                bad=Bad(config.HEARTBEAT_AGE_BAD_SECONDS, "DlkitJobsStuckProcessing"),
            ),
        ],
        links=[
            # Jaeger's own search: every job's span (tag download.jobId=<id> finds one job), and the slow ones.
            build.DashboardLink("Job traces (Jaeger)")
            .url(config.jaeger_search("download.job"))
            .icon("external link")
            .target_blank(True),
            build.DashboardLink(f"Jobs over {config.TIME_TO_FILE_SECONDS} s (Jaeger)")
            .url(config.jaeger_search("download.job", min_duration=f"{config.TIME_TO_FILE_SECONDS}s"))
            .icon("external link")
            .target_blank(True),
        ],
    )


def proxy_chain() -> dict:
    sel = 'layer=~"$layer", route=~"$proxy_route"'
    polling = f'{sel}, route!="{config.LEGACY_PROXY_ROUTE}"'
    proxied = "dlkit_proxy_requests_total"
    return dashboard(
        "dlkit-proxy-chain",
        "dlkit / proxy chain",
        "What each proxy layer (edge, lb, nginx) answered, and the legacy synchronous call that they time out. "
        "Staging's real ALB and Cloudflare: the dlkit / staging edge dashboard.",
        [
            graph(
                "Outcomes by layer",
                "reqps",
                [Q(f"sum by (layer, status) (rate({proxied}{{{sel}}}[{RATE}]))", "{{layer}} {{status}}")],
            ),
            graph(
                "504 / 524 share by layer",
                "percentunit",
                [
                    Q(
                        f'sum by (layer) (rate({proxied}{{{sel}, status=~"504|524"}}[{RATE}])) '
                        f"/ sum by (layer) (rate({proxied}{{{sel}}}[{RATE}]))",
                        "{{layer}}",
                    )
                ],
                description=f"All route classes: the legacy `{config.LEGACY_PROXY_ROUTE}` route is expected here. "
                "The alert watches the other routes: next panel.",
            ),
            graph(
                "502 by layer",
                "reqps",
                [
                    Q(
                        f'sum by (layer) (rate({proxied}{{{sel}, status="502"}}[{RATE}])) '
                        f"or sum by (layer) (rate({proxied}{{{sel}}}[{RATE}])) * 0",
                        "{{layer}}",
                    )
                ],
                bad=Bad(0.001),
                description="Any 502 is a keep-alive race or a dead upstream (docs/proxy-chain.md).",
            ),
            graph(
                "Synchronous vs polling calls (at the API)",
                "reqps",
                [
                    Q(f'sum(rate({HTTP}{{route="{config.LEGACY_ROUTE}"}}[{RATE}]))', "sync start"),
                    Q(f'sum(rate({HTTP}{{route=~"{SLO_ROUTES}"}}[{RATE}]))', "initiate + status"),
                ],
            ),
            graph(
                "Synchronous calls answered 504 by the app itself",
                "percentunit",
                [
                    Q(
                        f'sum(rate({HTTP}{{route="{config.LEGACY_ROUTE}", status="504"}}[{RATE}])) '
                        f'/ sum(rate({HTTP}{{route="{config.LEGACY_ROUTE}"}}[{RATE}]))',
                        "504 share",
                    )
                ],
                description="Expected: the legacy route is kept broken on purpose.",
            ),
            graph(
                "Synchronous call duration p95",
                "s",
                [
                    Q(
                        f"histogram_quantile(0.95, sum by (le) (rate(dlkit_http_request_duration_seconds_bucket"
                        f'{{route="{config.LEGACY_ROUTE}"}}[{RATE}])))',
                        "p95",
                    )
                ],
            ),
            graph(
                "504 / 524 share by layer and route, legacy route excluded",
                "percentunit",
                [
                    Q(
                        f'(sum by (layer, route) (rate({proxied}{{{polling}, status=~"504|524"}}[{RATE}])) '
                        f"or 0 * sum by (layer, route) (rate({proxied}{{{polling}}}[{RATE}]))) "
                        f"/ sum by (layer, route) (rate({proxied}{{{polling}}}[{RATE}]))",
                        "{{layer}} {{route}}",
                    )
                ],
                bad=Bad(config.PROXY_TIMEOUT_SHARE_BAD, "DlkitProxyTimeouts"),
                description="What DlkitProxyTimeouts watches: the polling API's calls return in milliseconds.",
            ),
        ],
        [
            query_variable("layer", "Layer", f"label_values({proxied}, layer)"),
            query_variable("proxy_route", "Route class", f"label_values({proxied}, route)"),
        ],
    )


def workers() -> dict:
    inst = 'instance=~"$instance"'
    return dashboard(
        "dlkit-workers",
        "dlkit / workers",
        "RQ workers: busy/idle, outcomes, heartbeats, files and bytes.",
        [
            graph(
                "Busy workers",
                "short",
                [
                    Q(f"sum(dlkit_worker_busy{{{inst}}})", "busy"),
                    Q(f"count(dlkit_worker_busy{{{inst}}})", "total"),
                ],
                description="Busy equal to total for long: the queue backs up (DlkitQueueBackingUp).",
            ),
            graph(
                "Workers registered in Redis",
                "short",
                [Q("max by (state) (dlkit_workers)", "{{state}}")],
                bad=Bad(1, "DlkitNoLiveWorker", below=True),
                description="Busy plus idle at 0: no live worker takes jobs. Lost: killed without deregistering "
                "(RQ lists it for minutes; it no longer stamps itself live).",
            ),
            graph(
                "Jobs handled per worker by outcome",
                "ops",
                [
                    Q(
                        f"sum by (instance, outcome) (rate(dlkit_worker_jobs_total{{{inst}}}[{RATE}]))",
                        "{{instance}} {{outcome}}",
                    )
                ],
            ),
            graph(
                "Heartbeat age",
                "s",
                [Q(f"max by (instance) (dlkit_worker_heartbeat_age_seconds{{{inst}}})", "{{instance}}")],
                bad=Bad(config.HEARTBEAT_AGE_BAD_SECONDS, "DlkitJobsStuckProcessing"),
            ),
            graph(
                "Files processed by availability",
                "ops",
                [Q(f"sum by (result) (rate(dlkit_worker_files_total{{{inst}}}[{RATE}]))", "{{result}}")],
            ),
            graph(
                "Artifact bytes uploaded",
                "Bps",
                [Q(f"sum(rate(dlkit_worker_artifact_bytes_total{{{inst}}}[{RATE}]))", "bytes/s")],
            ),
            graph(
                "Run time p50 / p95",
                "s",
                [
                    Q(
                        f"histogram_quantile({q}, sum by (le) (rate(dlkit_job_run_seconds_bucket{{{inst}}}[{RATE}])))",
                        f"p{int(q * 100)}",
                        exemplars=q == 0.5,
                    )
                    for q in (0.5, 0.95)
                ],
                description=EXEMPLARS,
            ),
            single(
                "Worker targets up",
                "short",
                [Q('sum(up{job="worker"})', "up")],
                bad=Bad(1, "DlkitWorkersAbsent", below=True),
            ),
        ],
        [query_variable("instance", "Worker", "label_values(dlkit_worker_busy, instance)")],
    )


def slo() -> dict:
    avail_budget = 1 - config.AVAILABILITY_OBJECTIVE
    ttf_budget = 1 - config.TIME_TO_FILE_OBJECTIVE
    avail = "route:dlkit_http_requests:error_ratio_rate"
    ttf = ":dlkit_job_time_to_file:error_ratio_rate"
    windows = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    page = config.BURN_WINDOWS[0][2]
    ticket = config.BURN_WINDOWS[-1][2]
    burn_text = (
        "Burn rate = error ratio / budget: 1 spends the budget in exactly 30 days. The alerts fire when a "
        "long and a short window both exceed: "
        + ", ".join(f"{lw}+{sw} > {rate:g}x ({sev})" for lw, sw, rate, sev in config.BURN_WINDOWS)
        + "."
    )
    return dashboard(
        "dlkit-slo",
        "dlkit / SLOs and error budgets",
        f"Availability: {config.AVAILABILITY_OBJECTIVE:.1%} of initiate and status answers not 5xx. Time to file: "
        f"{config.TIME_TO_FILE_OBJECTIVE:.0%} of jobs deliver within {config.TIME_TO_FILE_SECONDS} s. "
        f"Windows of {config.SLO_WINDOW}.",
        [
            single(
                f"Availability over {config.SLO_WINDOW} (objective {config.AVAILABILITY_OBJECTIVE:.1%})",
                "percentunit",
                [Q(f'1 - {avail}30d{{route=~"$route"}}', "{{route}}")],
                bad=Bad(config.AVAILABILITY_OBJECTIVE, "DlkitApiErrorBudgetBurn", below=True),
                decimals=3,
            ),
            single(
                f"Availability error budget remaining ({config.SLO_WINDOW})",
                "percentunit",
                [Q(f'1 - {avail}30d{{route=~"$route"}} / {avail_budget:g}', "{{route}}")],
                bad=Bad(0, "DlkitApiErrorBudgetBurn", below=True),
                decimals=1,
                description="1 = untouched, 0 = spent, negative = overspent.",
            ),
            single(
                f"Time to file within {config.TIME_TO_FILE_SECONDS} s over {config.SLO_WINDOW} "
                f"(objective {config.TIME_TO_FILE_OBJECTIVE:.0%})",
                "percentunit",
                [Q(f"1 - {ttf}30d", "jobs on time")],
                bad=Bad(config.TIME_TO_FILE_OBJECTIVE, "DlkitTimeToFileErrorBudgetBurn", below=True),
                decimals=2,
            ),
            single(
                f"Time-to-file error budget remaining ({config.SLO_WINDOW})",
                "percentunit",
                [Q(f"1 - {ttf}30d / {ttf_budget:g}", "budget left")],
                bad=Bad(0, "DlkitTimeToFileErrorBudgetBurn", below=True),
                decimals=1,
                description="1 = untouched, 0 = spent, negative = overspent.",
            ),
            graph(
                "Availability burn rate per window",
                "x",
                [Q(f'{avail}{w}{{route=~"$route"}} / {avail_budget:g}', f"{w} {{{{route}}}}") for w in windows],
                bad=Bad(page, "DlkitApiErrorBudgetBurn", warn=ticket),
                description=burn_text,
            ),
            graph(
                "Time-to-file burn rate per window",
                "x",
                [Q(f"{ttf}{w} / {ttf_budget:g}", w) for w in windows],
                bad=Bad(page, "DlkitTimeToFileErrorBudgetBurn", warn=ticket),
                description=burn_text,
            ),
            graph(
                "Availability error ratio by route (5m)",
                "percentunit",
                [Q(f'{avail}5m{{route=~"$route"}}', "{{route}}")],
                bad=Bad(avail_budget, "DlkitApiErrorBudgetBurn"),
            ),
            graph(
                "Time-to-file error ratio (5m)",
                "percentunit",
                [Q(f"{ttf}5m", "ratio")],
                bad=Bad(ttf_budget, "DlkitTimeToFileErrorBudgetBurn"),
            ),
        ],
        [query_variable("route", "Route", f"label_values({avail}5m, route)")],
    )


def staging_edge() -> dict:
    """Staging's real load balancer (CloudWatch, namespace AWS/ApplicationELB) and Cloudflare zone
    (cloudflare-exporter's metrics in Prometheus). Neither exists on a local stack: docs/monitoring-staging.md."""

    def alb(
        title: str, unit: str, metrics: list[tuple[str, str, str]], bad: Bad | None = None, description: str = ""
    ) -> timeseries.Panel:
        targets = [
            cloudwatch.CloudWatchMetricsQuery()
            .ref_id(chr(ord("A") + i))
            .datasource(CLOUDWATCH)
            .query_mode(cw_model.CloudWatchQueryMode.METRICS)
            .metric_query_type(cw_model.MetricQueryType.SEARCH)
            .metric_editor_mode(cw_model.MetricEditorMode.BUILDER)
            .region("$region")
            .namespace("AWS/ApplicationELB")
            .metric_name(metric)
            .statistic(statistic)
            .dimensions({"LoadBalancer": "$load_balancer"})
            .match_exact(True)
            .period("")
            .label(label)
            for i, (metric, statistic, label) in enumerate(metrics)
        ]
        panel = (
            timeseries.Panel()
            .title(title)
            .description(description)
            .datasource(CLOUDWATCH)
            .unit(unit)
            .targets(targets)
            .thresholds(_thresholds(bad))
            .links(
                _links(bad)
                + [build.DashboardLink("How staging is monitored").url(config.STAGING_DOC_URL).target_blank(True)]
            )
        )
        if bad is not None and bad.value is not None:
            panel = panel.thresholds_style(
                common.GraphThresholdsStyleConfig().mode(common_model.GraphThresholdsStyleMode.DASHED)
            )
        return panel

    return dashboard(
        "dlkit-staging-edge",
        "dlkit / staging edge (ALB, Cloudflare)",
        "Staging's real AWS Application Load Balancer (CloudWatch) and Cloudflare zone (its analytics through "
        "cloudflare-exporter, in Prometheus): the layers the local chain emulates. See docs/monitoring-staging.md.",
        [
            alb("Requests", "short", [("RequestCount", "Sum", "requests")]),
            alb(
                "504 from the ALB itself (idle timeout)",
                "short",
                [("HTTPCode_ELB_504_Count", "Sum", "ELB 504"), ("HTTPCode_ELB_502_Count", "Sum", "ELB 502")],
                bad=Bad(1),
                description="504: the target sent nothing within the idle timeout (60 s); 502: the target "
                "closed a keep-alive connection first. Both should be 0 for the polling API.",
            ),
            alb(
                "5xx from the targets (nginx, API)",
                "short",
                [("HTTPCode_Target_5XX_Count", "Sum", "target 5xx")],
                bad=Bad(1),
            ),
            alb("Target response time p95", "s", [("TargetResponseTime", "p95", "p95")]),
            alb(
                "Healthy and unhealthy targets",
                "short",
                [("HealthyHostCount", "Minimum", "healthy"), ("UnHealthyHostCount", "Maximum", "unhealthy")],
                description="Dimension TargetGroup is needed for per-group figures; this sums the load balancer's.",
            ),
            alb(
                "Rejected and refused connections",
                "short",
                [
                    ("RejectedConnectionCount", "Sum", "rejected"),
                    ("TargetConnectionErrorCount", "Sum", "target errors"),
                ],
                bad=Bad(1),
            ),
            # Cloudflare's zone analytics, through the Cloudflare exporter (docs/monitoring-staging.md).
            graph(
                "Cloudflare answers by status",
                "reqps",
                [Q(f'sum by (zone, status) (rate({CLOUDFLARE}{{zone=~"$zone"}}[{RATE}]))', "{{zone}} {{status}}")],
                description="Edge answers of the zone, from Cloudflare's analytics (cloudflare-exporter).",
            ),
            graph(
                "Cloudflare 524 share (origin sent nothing within the Proxy Read Timeout)",
                "percentunit",
                [
                    Q(
                        f'(sum by (zone) (rate({CLOUDFLARE}{{zone=~"$zone", status="524"}}[{RATE}])) '
                        f'or 0 * sum by (zone) (rate({CLOUDFLARE}{{zone=~"$zone"}}[{RATE}]))) '
                        f'/ sum by (zone) (rate({CLOUDFLARE}{{zone=~"$zone"}}[{RATE}]))',
                        "{{zone}}",
                    )
                ],
                bad=Bad(config.PROXY_TIMEOUT_SHARE_BAD, "DlkitProxyTimeouts"),
                description=f"Zone-wide, so the legacy `{config.LEGACY_ROUTE}` calls are in it: compare with the "
                "proxy chain dashboard's nginx figures by route.",
            ),
        ],
        [
            build.TextBoxVariable("region")
            .label("AWS region")
            .default_value("default")
            .description("the staging region (infra/terraform variable region); `default` is the datasource's"),
            build.TextBoxVariable("load_balancer")
            .label("ALB (arn suffix)")
            .description("terraform output of proxy/alb's lb_arn_suffix: app/<name>/<id>"),
            query_variable("zone", "Cloudflare zone", f"label_values({CLOUDFLARE}, zone)"),
        ],
        datasources=("prometheus", "cloudwatch"),
    )


DASHBOARDS = {
    "dlkit-service.json": service,
    "dlkit-jobs.json": jobs,
    "dlkit-proxy-chain.json": proxy_chain,
    "dlkit-workers.json": workers,
    "dlkit-slo.json": slo,
    "dlkit-staging-edge.json": staging_edge,
}


def render() -> dict[str, str]:
    """File name -> the JSON text to commit (sorted keys, stable across runs)."""
    return {name: json.dumps(make(), indent=2, sort_keys=True) + "\n" for name, make in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    parser.add_argument("--out", type=Path, default=DASHBOARDS_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for name in stale:
        print(f"{'differs' if args.check else 'wrote'}: {args.out / name}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
