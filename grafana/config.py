"""The one place for the monitoring settings the dashboards (grafana/generate.py) and the alerts
(infra/prometheus/alerts.yml, checked against this module by tests/test_dashboards.py) share.

Fork the kit: change REPOSITORY_URL, run `python -m grafana.generate`, and replace the prefix of
every runbook_url in alerts.yml (tests/test_dashboards.py lists the ones that differ).
"""

from __future__ import annotations

# Where this repository is browsable. Every absolute link (runbook sections, rule files) starts here.
REPOSITORY_URL = "https://github.com/dlkit/dlkit/blob/main"
RUNBOOK_BASE_URL = f"{REPOSITORY_URL}/docs/runbook.md"
ALERTS_URL = f"{REPOSITORY_URL}/infra/prometheus/alerts.yml"
RULES_URL = f"{REPOSITORY_URL}/infra/prometheus/rules.yml"
STAGING_DOC_URL = f"{REPOSITORY_URL}/docs/monitoring-staging.md"


# Jaeger's UI (compose publishes it here; docs/tracing.md): the jobs dashboard links to its search.
JAEGER_URL = "http://127.0.0.1:16686"


def jaeger_search(operation: str, service: str = "dlkit-worker", min_duration: str | None = None) -> str:
    """Jaeger's search page for the spans `operation` of `service` of the last hour (slower than
    `min_duration`, e.g. "150s", if given)."""
    query = f"service={service}&operation={operation}&lookback=1h" + (
        f"&minDuration={min_duration}" if min_duration else ""
    )
    return f"{JAEGER_URL}/search?{query}"


def runbook_url(alert: str) -> str:
    """The runbook section of an alert: GitHub's anchor of `## AlertName` is the lower-cased name."""
    return f"{RUNBOOK_BASE_URL}#{alert.lower()}"


# Objectives over a 30-day window (the burn-rate alerts of alerts.yml use the same numbers).
SLO_WINDOW = "30d"
AVAILABILITY_OBJECTIVE = 0.999  # initiate and status answers that are not 5xx
TIME_TO_FILE_OBJECTIVE = 0.99  # jobs that deliver their file within TIME_TO_FILE_SECONDS
TIME_TO_FILE_SECONDS = 150

# Multi-window, multi-burn-rate alerts (Google SRE workbook, as Sloth generates them):
# (long window, short window, burn rate, severity). 14.4x over 1h spends 2 % of the budget, 6x over
# 6h 5 %: pages. 3x over 1d and 1x over 3d spend 10 %: tickets.
BURN_WINDOWS = (
    ("1h", "5m", 14.4, "critical"),
    ("6h", "30m", 6.0, "critical"),
    ("1d", "2h", 3.0, "warning"),
    ("3d", "6h", 1.0, "warning"),
)

# What "bad" is on the operational panels: the thresholds of the alerts of the same name.
QUEUE_AGE_BAD_SECONDS = 60  # DlkitQueueBackingUp
HEARTBEAT_AGE_BAD_SECONDS = 60  # DlkitJobsStuckProcessing
PROXY_TIMEOUT_SHARE_BAD = 0.01  # DlkitProxyTimeouts
# The legacy synchronous route times out by design (it is the problem the kit reproduces).
LEGACY_ROUTE = "/v1/download/start"
LEGACY_PROXY_ROUTE = "start"  # its route class in the proxies' counters (proxy/nginx/metrics.conf.template)
SLO_ROUTES = ("/v1/download/initiate", "/v1/download/status/<job_id>")
