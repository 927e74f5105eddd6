"""`dlkit audit`: check the timeout budget across Cloudflare, the ALB, nginx, gunicorn and the app.

Reads the real config files (dlkit/kit/timeouts.py) and reports findings, each with the numbers and the
file:line of every setting involved:

- error: a setting that breaks requests that should work (keep-alive races, cut event streams, a
  sync gunicorn worker killed mid-request, a `Prefer: wait` cap not below every timeout on initiate's path);
- warning: a setting that degrades the fix (status polls that outwait the poll interval);
- expected: the legacy synchronous route being cut, which the kit keeps on purpose to reproduce the
  problem. It does not fail the audit.

It also checks that the deployments run the audited files (dlkit.kit.timeouts.read_deployment): the ALB
health check asks /health, infra/terraform keeps proxy/alb's idle timeout (or the override is
reported), docker-compose.yml serves proxy/nginx/dlkit.conf.template and sets no timeout variable
that would change what was audited.

Exit status: 0 when nothing is an error or a warning, 1 otherwise, 2 when a config cannot be read.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dlkit.kit.timeouts import (
    ALB_MODULE_SOURCE,
    CLOUDFLARE_DEFAULT_READ_TIMEOUTS_S,
    COMPOSE,
    INITIATE_ROUTE,
    LEGACY_ROUTE,
    NGINX_CONF,
    NGINX_TEMPLATES_DIR,
    STAGING,
    Chain,
    ConfigError,
    Deployment,
    Location,
    Setting,
    cut_share,
    is_sync_worker,
    legacy_route_cuts,
    read_chain,
    read_deployment,
)

LEGACY = LEGACY_ROUTE
STATUS = "/v1/download/status/"
EVENTS = "/v1/download/events/"


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    EXPECTED = "expected"


@dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    message: str
    locations: tuple[str, ...]  # "file:line" of each setting involved


def audit(chain: Chain, deployment: Deployment | None = None) -> list[Finding]:
    """Every finding for `chain` (and `deployment`, if given), the expected legacy-route one first."""
    return [
        *_legacy_route(chain),
        *_keepalive_races(chain),
        *_event_stream(chain),
        *_status_polls(chain),
        *_gunicorn_timeout(chain),
        *_prefer_wait(chain),
        *_cloudflare_plan(chain),
        *(_deployment(chain, deployment) if deployment is not None else []),
    ]


def failed(findings: list[Finding]) -> bool:
    return any(f.severity in (Severity.ERROR, Severity.WARNING) for f in findings)


def _where(setting: Setting, location: Location | None = None) -> str:
    # A timeout nginx leaves to its default applies at the location: point there.
    if setting.line == 0 and location is not None:
        return f"{setting.file}:{location.line}"
    return setting.where


def _location(chain: Chain, match: str, check: str) -> Location | Finding:
    try:
        return chain.nginx.location(match)
    except KeyError:
        return Finding(check, Severity.ERROR, f"nginx has no `location {match}`", (str(NGINX_CONF),))


def _legacy_route(chain: Chain) -> list[Finding]:
    location = _location(chain, LEGACY, "legacy-route")
    if isinstance(location, Finding):
        return [location]
    app = chain.app
    low, high = app.DOWNLOAD_DELAY_MIN_MS.seconds, app.DOWNLOAD_DELAY_MAX_MS.seconds
    first, *others = legacy_route_cuts(chain)
    rest = ", ".join(
        f"{cut.label} {cut.setting.seconds:g} s: {cut_share(cut.setting.seconds, low, high):.1%}" for cut in others
    )
    edge = chain.edge_read_timeout.seconds
    if edge in CLOUDFLARE_DEFAULT_READ_TIMEOUTS_S:
        # Cloudflare documents both defaults: say what the other would cut too.
        other = next(d for d in CLOUDFLARE_DEFAULT_READ_TIMEOUTS_S if d != edge)
        rest += f" (or {other:g} s, Cloudflare's other documented default: {cut_share(other, low, high):.1%})"
    message = (
        f"POST /v1/download/start: {first.label} cuts first at {first.setting.seconds:g} s, "
        f"{cut_share(first.setting.seconds, low, high):.1%} of {low:g}-{high:g} s downloads ({rest}). "
        "Kept broken on purpose to reproduce the problem: use initiate + status"
    )
    where = [_where(cut.setting, cut.location) for cut in (first, *others)]
    return [
        Finding(
            "legacy-route",
            Severity.EXPECTED,
            message,
            (*where, app.DOWNLOAD_DELAY_MIN_MS.where, app.DOWNLOAD_DELAY_MAX_MS.where),
        )
    ]


def _keepalive_races(chain: Chain) -> list[Finding]:
    findings = []
    lb, nginx = chain.lb_idle_timeout, chain.nginx.server_keepalive_timeout
    if lb.seconds >= nginx.seconds:
        findings.append(
            Finding(
                "keepalive-lb",
                Severity.ERROR,
                f"ALB idle_timeout {lb.seconds:g} s >= nginx keepalive_timeout {nginx.seconds:g} s: nginx closes "
                "idle connections the ALB still reuses, and the ALB answers 502; keep nginx's longer",
                (lb.where, nginx.where),
            )
        )
    # A sync worker closes the connection after every response (it ignores keepalive), so nginx never
    # reuses one and there is nothing to race.
    upstream, gunicorn = chain.nginx.upstream_keepalive_timeout, chain.gunicorn.keepalive
    if not is_sync_worker(chain.gunicorn.worker_class) and upstream.seconds >= gunicorn.seconds:
        findings.append(
            Finding(
                "keepalive-upstream",
                Severity.ERROR,
                f"nginx upstream keepalive_timeout {upstream.seconds:g} s >= "
                f"gunicorn keepalive {gunicorn.seconds:g} s: "
                "gunicorn closes idle connections nginx still reuses, and nginx answers 502; keep gunicorn's longer",
                (upstream.where, gunicorn.where),
            )
        )
    return findings


def _event_stream(chain: Chain) -> list[Finding]:
    location = _location(chain, EVENTS, "sse-heartbeat")
    if isinstance(location, Finding):
        return [location]
    findings = []
    heartbeat = chain.app.SSE_HEARTBEAT_S
    for name, setting in (
        (f"nginx proxy_read_timeout of location {EVENTS}", location.proxy_read_timeout),
        ("ALB idle_timeout", chain.lb_idle_timeout),
        ("Cloudflare proxy_read_timeout", chain.edge_read_timeout),
    ):
        if setting.seconds <= heartbeat.seconds:
            findings.append(
                Finding(
                    "sse-heartbeat",
                    Severity.ERROR,
                    f"{name} {setting.seconds:g} s <= SSE_HEARTBEAT_S {heartbeat.seconds:g} s: "
                    "an event stream is cut between two heartbeats",
                    (_where(setting, location), heartbeat.where),
                )
            )
    if not location.proxy_buffering_off:
        findings.append(
            Finding(
                "sse-buffering",
                Severity.ERROR,
                f"proxy_buffering is not off in location {EVENTS}: events and heartbeats wait in nginx's buffer, "
                "so the client, the ALB and Cloudflare see a silent stream",
                (f"{NGINX_CONF}:{location.line}",),
            )
        )
    return findings


def _status_polls(chain: Chain) -> list[Finding]:
    location = _location(chain, STATUS, "status-poll")
    if isinstance(location, Finding):
        return [location]
    read, interval = location.proxy_read_timeout, chain.app.POLL_INTERVAL_S
    if read.seconds <= interval.seconds:
        return []
    return [
        Finding(
            "status-poll",
            Severity.WARNING,
            f"nginx proxy_read_timeout of location {STATUS} {read.seconds:g} s > POLL_INTERVAL_S "
            f"{interval.seconds:g} s: a client waits longer for one slow poll than between two polls, so polls "
            "pile up; a status call should answer, or fail, within the interval",
            (_where(read, location), interval.where),
        )
    ]


def _cloudflare_plan(chain: Chain) -> list[Finding]:
    # Every check above takes the edge at proxy/cloudflare's value. Only an Enterprise zone runs
    # another value than Cloudflare's default, and the module writes it only there (enterprise = true).
    edge = chain.edge_read_timeout
    if edge.seconds in CLOUDFLARE_DEFAULT_READ_TIMEOUTS_S:
        return []
    defaults = " or ".join(f"{d:g} s" for d in CLOUDFLARE_DEFAULT_READ_TIMEOUTS_S)
    return [
        Finding(
            "cloudflare-plan",
            Severity.WARNING,
            f"Cloudflare proxy_read_timeout {edge.seconds:g} s is not one of Cloudflare's documented defaults "
            f"({defaults}): only an Enterprise zone can run it (proxy/cloudflare writes it only with enterprise = "
            "true); any other zone keeps the default, and the chain clients meet is not the one audited",
            (edge.where,),
        )
    ]


def _gunicorn_timeout(chain: Chain) -> list[Finding]:
    # Only sync workers: gthread workers heartbeat from their main loop, not from the request thread,
    # so `timeout` never cuts a long request there. Reporting it for gthread would be false.
    gunicorn, longest = chain.gunicorn, chain.app.DOWNLOAD_DELAY_MAX_MS
    if not is_sync_worker(gunicorn.worker_class) or gunicorn.timeout.seconds >= longest.seconds:
        return []
    where = [gunicorn.timeout.where, longest.where]
    if gunicorn.worker_class_line:
        where.insert(1, f"{gunicorn.timeout.file}:{gunicorn.worker_class_line}")
    return [
        Finding(
            "gunicorn-timeout",
            Severity.ERROR,
            f"gunicorn sync worker timeout {gunicorn.timeout.seconds:g} s < DOWNLOAD_DELAY_MAX_MS "
            f"{longest.seconds:g} s: the arbiter kills a worker in the middle of a long request, and nginx "
            "answers 502; use gthread workers",
            tuple(where),
        )
    ]


def _prefer_wait(chain: Chain) -> list[Finding]:
    # `Prefer: wait=N` holds initiate silent for up to PREFER_WAIT_MAX_S: every timeout on its path must
    # be longer, or the layer cuts the wait with a 504 (524 at the edge) instead of the API's 202.
    location = _location(chain, INITIATE_ROUTE, "prefer-wait")
    if isinstance(location, Finding):
        return [location]
    cap = chain.app.PREFER_WAIT_MAX_S
    layers = [
        (f"nginx proxy_read_timeout of location {INITIATE_ROUTE}", location.proxy_read_timeout),
        ("ALB idle_timeout", chain.lb_idle_timeout),
        ("Cloudflare proxy_read_timeout", chain.edge_read_timeout),
    ]
    if is_sync_worker(chain.gunicorn.worker_class):
        layers.append(("gunicorn sync worker timeout", chain.gunicorn.timeout))
    return [
        Finding(
            "prefer-wait",
            Severity.ERROR,
            f"{name} {setting.seconds:g} s <= PREFER_WAIT_MAX_S {cap.seconds:g} s: a client asking for "
            "`Prefer: wait` on initiate is cut by that layer instead of getting 202; keep the cap below it",
            (_where(setting, location), cap.where),
        )
        for name, setting in layers
        if setting.seconds <= cap.seconds
    ]


def _deployment(chain: Chain, deployment: Deployment) -> list[Finding]:
    findings = []
    health = deployment.alb_health_check_path
    if health.value != "/health":
        findings.append(
            Finding(
                "alb-health-check",
                Severity.ERROR,
                f"the ALB target group checks {health.value!r}, not /health: a target whose Redis or storage is "
                "down stays in service",
                (health.where,),
            )
        )

    if deployment.staging_uses_alb is False:
        findings.append(
            Finding(
                "staging-alb",
                Severity.ERROR,
                f'no module in {STAGING} has source = "{ALB_MODULE_SOURCE}": the staging load balancer is not '
                "the one audited",
                (str(STAGING),),
            )
        )
    staged, audited = deployment.staging_idle_timeout, chain.lb_idle_timeout
    if staged is not None and staged.seconds != audited.seconds:
        race = staged.seconds >= chain.nginx.server_keepalive_timeout.seconds
        findings.append(
            Finding(
                "staging-idle-timeout",
                Severity.ERROR if race else Severity.WARNING,
                f"{STAGING} passes idle_timeout {staged.seconds:g} s to proxy/alb, whose default {audited.seconds:g} s "
                "is what the audit checks"
                + (
                    f"; it is not below nginx keepalive_timeout {chain.nginx.server_keepalive_timeout.seconds:g} s, "
                    "so the ALB answers 502 on connections nginx closes"
                    if race
                    else ""
                )
                + ": change the module default instead, so every deployment and the audit agree",
                (staged.where, audited.where, chain.nginx.server_keepalive_timeout.where),
            )
        )

    templates = deployment.compose_nginx_templates
    if templates is not None:
        served = [t for t in templates if Path(t.value).as_posix().removeprefix("./") == NGINX_CONF.as_posix()]
        for other in templates:
            # Companions of the server block from the same folder (metrics.conf.template) are fine.
            if (
                other not in served
                and Path(other.value).parent.as_posix().removeprefix("./") != NGINX_CONF.parent.as_posix()
            ):
                findings.append(
                    Finding(
                        "compose-nginx-config",
                        Severity.ERROR,
                        f"{COMPOSE} mounts {other.value} into {NGINX_TEMPLATES_DIR}: nginx in compose must serve "
                        f"{NGINX_CONF}, the config the audit checks",
                        (other.where,),
                    )
                )
        if not served:
            findings.append(
                Finding(
                    "compose-nginx-config",
                    Severity.ERROR,
                    f"no service in {COMPOSE} mounts {NGINX_CONF} into {NGINX_TEMPLATES_DIR}: nginx in compose does "
                    "not run the audited config",
                    (str(COMPOSE),),
                )
            )
    for env in deployment.compose_timeout_env:
        if _production_scale(env.value):
            continue
        findings.append(
            Finding(
                "compose-timeout-env",
                Severity.WARNING,
                f"{COMPOSE} sets {env.value}: the stack then runs with a value the audit did not check (nginx in "
                "compose is not scaled either); change the default in its file instead",
                (env.where,),
            )
        )
    return findings


def _production_scale(assignment: str) -> bool:
    """TIME_SCALE passed through from the environment with 1 as its default runs the audited values."""
    name, _, value = assignment.partition("=")
    return name == "TIME_SCALE" and re.fullmatch(r"(\$\{TIME_SCALE:?-)?1(\.0*)?\}?", value) is not None


def to_json(findings: list[Finding]) -> dict:
    return {
        "ok": not failed(findings),
        "findings": [
            {"check": f.check, "severity": f.severity.value, "message": f.message, "locations": list(f.locations)}
            for f in findings
        ],
    }


_STYLES = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.EXPECTED: "cyan"}


def print_table(findings: list[Finding], console: Console) -> None:
    table = Table("severity", "check")
    table.add_column("finding, and the settings involved", overflow="fold")
    for f in findings:
        where = "\n".join(f"  {location}" for location in f.locations)
        table.add_row(f"[{_STYLES[f.severity]}]{f.severity.value}[/]", f.check, f"{f.message}\n[dim]{where}[/]")
    console.print(table)
    errors = sum(f.severity is Severity.ERROR for f in findings)
    warnings = sum(f.severity is Severity.WARNING for f in findings)
    if errors or warnings:
        console.print(f"[red]timeout audit failed:[/] {errors} error(s), {warnings} warning(s)")
    else:
        console.print("[green]timeout audit passed[/] (expected findings describe the kit's deliberate problem)")


def run(root: Path, as_json: bool, console: Console) -> int:
    """What `dlkit audit` does; returns the exit status."""
    try:
        findings = audit(read_chain(root), read_deployment(root))
    except ConfigError as error:
        print(f"dlkit audit: {error}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(to_json(findings), indent=2))
    else:
        print_table(findings, console)
    return 1 if failed(findings) else 0
