"""`dlkit audit` and the timeout model it reads: pure file reading, no server is started.

Each broken-config test copies the few files the audit reads into a temporary root (same relative
paths), breaks one setting, and checks the finding names that setting's file and line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dlkit.kit.cli import main
from dlkit.kit.timeouts import (
    ALB_MAIN,
    ALB_VARIABLES,
    CLOUDFLARE_VARIABLES,
    COMPOSE,
    FILES,
    GUNICORN_CONF,
    NGINX_CONF,
    ROOT,
    SETTINGS,
    STAGING,
    Level,
    cut_share,
    read_chain,
)

STAGING_MAIN = STAGING / "main.tf"
# What read_deployment reads besides FILES: the deployments that use them.
DEPLOYMENT_FILES = (ALB_MAIN, COMPOSE, *(p.relative_to(ROOT) for p in sorted((ROOT / STAGING).glob("*.tf"))))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for relative in (*FILES, *DEPLOYMENT_FILES):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, tmp_path / relative)
    return tmp_path


def line_of(root: Path, relative: Path, after: str, text: str) -> int:
    """1-based line of the first `text` after the one `after` anchor in a config file."""
    content = (root / relative).read_text()
    assert content.count(after) == 1, f"{after!r} is not unique in {relative}"
    return content.count("\n", 0, content.index(text, content.index(after))) + 1


def edit(root: Path, relative: Path, after: str, old: str, new: str) -> str:
    """Replace the first `old` after the `after` anchor; return "file:line" of the change."""
    line = line_of(root, relative, after, old)
    path = root / relative
    content = path.read_text()
    at = content.index(old, content.index(after))
    path.write_text(content[:at] + new + content[at + len(old) :])
    return f"{relative}:{line}"


def where(root: Path, relative: Path, after: str, text: str) -> str:
    return f"{relative}:{line_of(root, relative, after, text)}"


def run_audit(root: Path, capsys) -> tuple[int, dict]:
    code = main(["audit", "--root", str(root), "--json"])
    return code, json.loads(capsys.readouterr().out)


def only(report: dict, check: str) -> dict:
    found = [f for f in report["findings"] if f["check"] == check]
    assert len(found) == 1, report["findings"]
    return found[0]


def test_cut_share_matches_the_design_numbers():
    assert [round(cut_share(t, 10, 120), 3) for t in (30, 60, 100, 125, 5)] == [0.818, 0.545, 0.182, 0.0, 1.0]


def test_the_shipped_configs_pass_with_the_expected_legacy_finding(root, capsys):
    code, report = run_audit(root, capsys)

    assert code == 0 and report["ok"] is True
    assert [f["severity"] for f in report["findings"]] == ["expected"]
    legacy = only(report, "legacy-route")
    assert "app REQUEST_TIMEOUT_MS cuts first at 30 s, 81.8%" in legacy["message"]
    assert "initiate + status" in legacy["message"]
    assert legacy["locations"][0] == where(root, SETTINGS, "REQUEST_TIMEOUT_MS: int", "30_000")


def test_the_table_is_the_default_output(root, capsys):
    assert main(["audit", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "legacy-route" in out and "timeout audit passed" in out


def test_chain_values_carry_their_file_and_line(root):
    chain = read_chain(root)

    assert (chain.edge_read_timeout.seconds, chain.lb_idle_timeout.seconds) == (100, 60)
    assert chain.lb_idle_timeout.where == where(root, ALB_VARIABLES, 'variable "idle_timeout"', "default     = 60")
    assert chain.edge_read_timeout.where == where(
        root, CLOUDFLARE_VARIABLES, 'variable "proxy_read_timeout"', "default     = 100"
    )
    assert chain.app.DOWNLOAD_DELAY_MAX_MS.seconds == 120
    status = chain.nginx.location("/v1/download/status/")
    assert status.proxy_read_timeout.seconds == 5 and status.level("proxy_read_timeout") is Level.LOCATION
    assert chain.nginx.location("/v1/download/events/").proxy_buffering_off
    # `location /` sets no timeout: it inherits the server's.
    fallback = chain.nginx.location("/")
    assert fallback.level("proxy_read_timeout") is Level.SERVER
    assert fallback.proxy_read_timeout.where == where(root, NGINX_CONF, "server {", "proxy_read_timeout 10s;")


def test_nginx_time_units_and_defaults(root):
    status = "location /v1/download/status/ {"
    edit(root, NGINX_CONF, status, "proxy_read_timeout 5s;", "proxy_read_timeout 1m30s;")
    edit(root, NGINX_CONF, status, "proxy_connect_timeout 2s;", "proxy_connect_timeout 500ms;")
    edit(root, NGINX_CONF, "location = /v1/download/start {", "proxy_read_timeout 60s;", "")
    edit(root, NGINX_CONF, "server {", "proxy_read_timeout 10s;", "")

    nginx = read_chain(root).nginx
    status = nginx.location("/v1/download/status/")
    assert (status.proxy_read_timeout.seconds, status.proxy_connect_timeout.seconds) == (90, 0.5)
    legacy = nginx.location("= /v1/download/start")
    assert legacy.level("proxy_read_timeout") is Level.DEFAULT
    assert (legacy.proxy_read_timeout.seconds, legacy.proxy_read_timeout.line) == (60, 0)


def test_nginx_closing_before_the_load_balancer_is_an_error(root, capsys):
    changed = edit(root, NGINX_CONF, "server {", "keepalive_timeout 75s;", "keepalive_timeout 5s;")

    code, report = run_audit(root, capsys)

    assert code == 1 and report["ok"] is False
    finding = only(report, "keepalive-lb")
    assert finding["severity"] == "error"
    assert "60 s >= nginx keepalive_timeout 5 s" in finding["message"]
    assert finding["locations"] == [where(root, ALB_VARIABLES, 'variable "idle_timeout"', "default     = 60"), changed]


def test_gunicorn_closing_before_nginx_is_an_error(root, capsys):
    changed = edit(root, NGINX_CONF, "upstream dlkit_api {", "keepalive_timeout 55s;", "keepalive_timeout 80s;")

    code, report = run_audit(root, capsys)

    assert code == 1
    finding = only(report, "keepalive-upstream")
    assert finding["severity"] == "error"
    assert "80 s >= gunicorn keepalive 75 s" in finding["message"]
    assert finding["locations"] == [changed, where(root, GUNICORN_CONF, '"GUNICORN_KEEPALIVE_S"', '"75"')]


def test_an_event_stream_cut_between_heartbeats_is_an_error(root, capsys):
    changed = edit(
        root, NGINX_CONF, "location /v1/download/events/ {", "proxy_read_timeout 60s;", "proxy_read_timeout 10s;"
    )

    code, report = run_audit(root, capsys)

    assert code == 1
    finding = only(report, "sse-heartbeat")
    assert finding["severity"] == "error"
    assert "10 s <= SSE_HEARTBEAT_S 15 s" in finding["message"]
    assert finding["locations"] == [changed, where(root, SETTINGS, "SSE_HEARTBEAT_S: float", "15")]


def test_a_buffered_event_stream_is_an_error(root, capsys):
    edit(root, NGINX_CONF, "location /v1/download/events/ {", "proxy_buffering off;", "proxy_buffering on;")

    code, report = run_audit(root, capsys)

    assert code == 1
    finding = only(report, "sse-buffering")
    assert finding["locations"] == [where(root, NGINX_CONF, "location /v1/download/events/ {", "location")]


def test_status_polls_longer_than_the_poll_interval_are_a_warning(root, capsys):
    changed = edit(
        root, NGINX_CONF, "location /v1/download/status/ {", "proxy_read_timeout 5s;", "proxy_read_timeout 30s;"
    )

    code, report = run_audit(root, capsys)

    assert code == 1
    finding = only(report, "status-poll")
    assert finding["severity"] == "warning"
    assert "30 s > POLL_INTERVAL_S 5 s" in finding["message"]
    assert finding["locations"] == [changed, where(root, SETTINGS, "POLL_INTERVAL_S: float", "5")]


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_gunicorn_timeout_kills_only_sync_workers(root, capsys, worker_class):
    class_line = edit(root, GUNICORN_CONF, '"GUNICORN_WORKER_CLASS"', '"gthread"', f'"{worker_class}"')
    timeout_line = edit(root, GUNICORN_CONF, '"GUNICORN_TIMEOUT_S"', '"30"', '"30"')

    code, report = run_audit(root, capsys)

    found = [f for f in report["findings"] if f["check"] == "gunicorn-timeout"]
    if worker_class == "gthread":  # its timeout never cuts a request: nothing to report
        assert code == 0 and found == []
        return
    assert code == 1
    finding = only(report, "gunicorn-timeout")
    assert finding["severity"] == "error"
    assert "timeout 30 s < DOWNLOAD_DELAY_MAX_MS 120 s" in finding["message"]
    longest = where(root, SETTINGS, "DOWNLOAD_DELAY_MAX_MS: int", "120_000")
    assert finding["locations"] == [timeout_line, class_line, longest]


def test_an_unreadable_config_is_named_without_a_traceback(root, capsys):
    (root / NGINX_CONF).unlink()

    assert main(["audit", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert str(NGINX_CONF) in err and "Traceback" not in err


def test_staging_overriding_the_alb_idle_timeout_is_reported_with_its_line(root, capsys):
    edit(root, STAGING_MAIN, 'source = "../../proxy/alb"', "target_type = ", "idle_timeout = 45\n  target_type = ")

    code, report = run_audit(root, capsys)

    assert code == 1
    finding = only(report, "staging-idle-timeout")
    assert finding["severity"] == "warning"
    assert "idle_timeout 45 s" in finding["message"] and "default 60 s" in finding["message"]
    assert finding["locations"][:2] == [
        where(root, STAGING_MAIN, 'source = "../../proxy/alb"', "idle_timeout = 45"),
        where(root, ALB_VARIABLES, 'variable "idle_timeout"', "default     = 60"),
    ]


def test_a_staging_idle_timeout_past_nginx_keepalive_is_an_error(root, capsys):
    edit(root, STAGING_MAIN, 'source = "../../proxy/alb"', "target_type = ", "idle_timeout = 90\n  target_type = ")

    code, report = run_audit(root, capsys)

    finding = only(report, "staging-idle-timeout")
    assert code == 1 and finding["severity"] == "error"
    assert "502" in finding["message"]


def test_staging_without_the_alb_module_is_an_error(root, capsys):
    edit(root, STAGING_MAIN, 'module "alb" {', 'source = "../../proxy/alb"', 'source = "./somewhere-else"')

    code, report = run_audit(root, capsys)

    assert code == 1 and only(report, "staging-alb")["locations"] == [str(STAGING)]


def test_an_alb_health_check_off_health_is_an_error(root, capsys):
    changed = edit(root, ALB_MAIN, "health_check {", '"/health"', '"/"')

    code, report = run_audit(root, capsys)

    assert code == 1
    finding = only(report, "alb-health-check")
    assert finding["severity"] == "error" and finding["locations"] == [changed]


def test_compose_serving_another_nginx_config_is_an_error(root, capsys):
    changed = edit(root, COMPOSE, "  nginx:", "./proxy/nginx/dlkit.conf.template", "./my.conf.template")

    code, report = run_audit(root, capsys)

    assert code == 1
    messages = {f["message"]: f["locations"] for f in report["findings"] if f["check"] == "compose-nginx-config"}
    assert len(messages) == 2  # the stray template, and the audited one missing
    assert [changed] in messages.values() and [str(COMPOSE)] in messages.values()


@pytest.mark.parametrize("variable", ["TIME_SCALE", "GUNICORN_KEEPALIVE_S"])
def test_a_timeout_variable_in_compose_is_a_warning_at_its_line(root, capsys, variable):
    # Into the block the API and the workers share, as a user would add it.
    edit(root, COMPOSE, "environment: &app-env", "REDIS_URL:", f'{variable}: "50"\n    REDIS_URL:')

    code, report = run_audit(root, capsys)

    assert code == 1
    finding = only(report, "compose-timeout-env")
    assert finding["severity"] == "warning" and f"{variable}=50" in finding["message"]
    assert finding["locations"] == [where(root, COMPOSE, "environment: &app-env", variable)]


def test_deployments_are_optional(root, capsys):
    (root / COMPOSE).unlink()
    shutil.rmtree(root / STAGING)

    code, report = run_audit(root, capsys)

    assert code == 0 and [f["check"] for f in report["findings"]] == ["legacy-route"]
