"""Alerts in docker-compose.yml reach someone: Prometheus -> Alertmanager -> alert-log, which prints them.

The Alertmanager config is checked with amtool (Debian's prometheus-alertmanager, installed by the
Makefile's `prometheus` target) and then run: the real Alertmanager with the compose config, its
receiver pointed at the real alert-log script, gets an alert and the script prints it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from mirakuru import HTTPExecutor

from dlkit.kit import ROOT
from dlkit.kit.component import unmatchable
from dlkit.kit.stack import free_base_port

ALERTMANAGER_DIR = ROOT / "infra" / "alertmanager"
CONFIG = ALERTMANAGER_DIR / "alertmanager.yml"
LOG_WEBHOOK = ALERTMANAGER_DIR / "log_webhook.py"
# Debian names the server binary prometheus-alertmanager; the upstream image calls it alertmanager.
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
needs_amtool = pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed (make prometheus)")
needs_alertmanager = pytest.mark.skipif(ALERTMANAGER is None, reason="alertmanager not installed (make prometheus)")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


@needs_amtool
def test_the_alertmanager_config_passes_amtool():
    result = subprocess.run(["amtool", "check-config", str(CONFIG)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_prometheus_alerts_go_to_alertmanager_and_alertmanager_to_alert_log(services):
    prometheus = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t for am in prometheus["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]
    ]
    assert targets == ["alertmanager:9093"]
    assert "alertmanager" in services and any(p.endswith(":9093") for p in services["alertmanager"]["ports"])
    # Alertmanager mounts the file checked here, and routes every alert to the webhook alert-log serves.
    assert f"./{CONFIG.relative_to(ROOT)}:/etc/alertmanager/alertmanager.yml:ro" in services["alertmanager"]["volumes"]
    config = yaml.safe_load(CONFIG.read_text())
    receiver = next(r for r in config["receivers"] if r["name"] == config["route"]["receiver"])
    (webhook,) = receiver["webhook_configs"]
    log = services["alert-log"]
    port = log["command"][log["command"].index("--port") + 1]
    assert webhook["url"].startswith(f"http://alert-log:{port}/") and webhook["send_resolved"] is True
    assert any(v.startswith(f"./{LOG_WEBHOOK.relative_to(ROOT)}:") for v in log["volumes"])
    assert f"http://127.0.0.1:{port}/" in " ".join(log["healthcheck"]["test"])


@pytest.mark.slow  # two servers and Alertmanager's own notification schedule: about 10 s
@needs_alertmanager
def test_an_alert_sent_to_alertmanager_is_printed_by_alert_log(tmp_path):
    base = free_base_port()
    log_port, am_port, cluster_port = base, base + 1, base + 2
    # The compose config, with only the receiver's address moved from the compose network to
    # loopback and the grouping wait shortened; route, receiver and inhibition stay as written.
    config = yaml.safe_load(CONFIG.read_text())
    receiver = next(r for r in config["receivers"] if r["name"] == config["route"]["receiver"])
    path = receiver["webhook_configs"][0]["url"].split("/", 3)[3]
    receiver["webhook_configs"][0]["url"] = f"http://127.0.0.1:{log_port}/{path}"
    config["route"]["group_wait"] = "0s"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    printed = tmp_path / "alert-log.out"

    with (
        open(printed, "wb") as out,
        unmatchable(
            HTTPExecutor(
                [sys.executable, str(LOG_WEBHOOK), "--host", "127.0.0.1", "--port", str(log_port)],
                url=f"http://127.0.0.1:{log_port}/",
                method="GET",
                status=200,
                timeout=15,
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
        ),
        unmatchable(
            HTTPExecutor(
                [
                    ALERTMANAGER,
                    f"--config.file={tmp_path / 'alertmanager.yml'}",
                    f"--storage.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    f"--cluster.listen-address=127.0.0.1:{cluster_port}",
                    "--cluster.advertise-address=127.0.0.1:" + str(cluster_port),
                ],
                url=f"http://127.0.0.1:{am_port}/-/ready",
                method="GET",
                status=200,
                timeout=30,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        ),
    ):
        alert = [
            {
                "labels": {"alertname": "DlkitTestAlert", "severity": "warning"},
                "annotations": {"summary": "A test alert.", "runbook_url": "https://example.com/runbook#test"},
            }
        ]
        request = urllib.request.Request(
            f"http://127.0.0.1:{am_port}/api/v2/alerts",
            data=json.dumps(alert).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200
        # Alertmanager notifies on its own schedule: wait for the line rather than for a fixed time.
        line = _wait_for_line(printed, "DlkitTestAlert", timeout_s=30)
    assert line == "FIRING DlkitTestAlert severity=warning  A test alert.  runbook: https://example.com/runbook#test"


def _wait_for_line(path: Path, text: str, timeout_s: float) -> str:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if text in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"alert-log printed no line with {text!r}: {path.read_text()!r}")


def test_alert_log_prints_a_resolved_alert_on_one_line():
    sys.path.insert(0, str(ALERTMANAGER_DIR))
    try:
        import log_webhook
    finally:
        sys.path.remove(str(ALERTMANAGER_DIR))
    assert (
        log_webhook.format_alert({"status": "resolved", "labels": {"alertname": "X", "job": "api"}})
        == "RESOLVED X job=api"
    )
