"""The proxy configs themselves: the production nginx file passes `nginx -t` with the nginx the kit
installs, and the local renders scale exactly the durations. Pure file work, no stack."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dlkit.kit import chain
from dlkit.kit.recipes import nginx_binary
from dlkit.layers import layer_of

PRODUCTION_VALUES = {
    "DLKIT_UPSTREAM": "127.0.0.1:8000",
    "DLKIT_LISTEN": "127.0.0.1:8080",
    "DLKIT_TRUSTED_PROXIES": "10.0.0.0/8",
    "DLKIT_NJS_DIR": chain.ROOT / "proxy" / "nginx",
    "DLKIT_LAYER": "nginx",
    "DLKIT_METRICS_LISTEN": "127.0.0.1:9113",
}


def nginx_t(tmp_path: Path, http_block: str) -> subprocess.CompletedProcess:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  client_body_temp_path {tmp_path}/cb;\n  proxy_temp_path {tmp_path}/pt;\n"
        f"  fastcgi_temp_path {tmp_path}/ft;\n  uwsgi_temp_path {tmp_path}/ut;\n  scgi_temp_path {tmp_path}/st;\n"
        f"{http_block}\n}}\n"
    )
    return subprocess.run(
        [nginx_binary(), "-t", "-p", f"{tmp_path}/", "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
    )


def test_the_production_server_block_passes_nginx_t(tmp_path):
    values = {**PRODUCTION_VALUES, "DLKIT_ACCESS_LOG": tmp_path / "access.log", "DLKIT_CONF_DIR": tmp_path}
    (tmp_path / "dlkit.conf").write_text(chain.fill((chain.ROOT / chain.NGINX_TEMPLATE).read_text(), values))
    (tmp_path / "metrics.conf").write_text(chain.fill((chain.ROOT / chain.METRICS_TEMPLATE).read_text(), values))
    result = nginx_t(tmp_path, f"  include {tmp_path}/dlkit.conf;")
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_every_timeout_in_the_production_file_is_explicit():
    text = (chain.ROOT / chain.NGINX_TEMPLATE).read_text()

    def body(location):
        return re.search(rf"location {re.escape(location)} \{{(.*?)\n    \}}", text, re.DOTALL)[1]

    for location in ["= /v1/download/initiate", "/v1/download/status/", "= /v1/download/start", "/v1/download/events/"]:
        for directive in ("proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout"):
            assert re.search(rf"^\s+{directive} \d+s;", body(location), re.MULTILINE), (location, directive)
    for directive in ("keepalive_timeout", "client_header_timeout", "client_body_timeout", "send_timeout"):
        assert re.search(rf"^\s+{directive} \d+s;", text, re.MULTILINE), directive


def test_scaling_multiplies_every_work_sized_duration_and_nothing_else():
    conf = "    proxy_read_timeout 60s;\n    keepalive_timeout 75s;\n    keepalive 32;\n    send_timeout 2m;\n"
    scaled = chain.scale_durations(conf, 0.02)
    assert "proxy_read_timeout 1200ms;" in scaled
    assert "keepalive_timeout 1500ms;" in scaled
    assert "send_timeout 2400ms;" in scaled
    assert "keepalive 32;" in scaled  # a count, not a duration


def test_handling_guards_keep_their_real_value_and_work_sized_ones_a_one_second_floor():
    # A status poll's 5 s would become 100 ms, shorter than a loaded machine's real status call.
    assert "proxy_read_timeout 5000ms;" in chain.scale_durations("  proxy_read_timeout 5s;\n", 0.02)
    assert "client_header_timeout 10000ms;" in chain.scale_durations("  client_header_timeout 10s;\n", 0.02)
    assert "proxy_read_timeout 1000ms;" in chain.scale_durations("  proxy_read_timeout 30s;\n", 0.01)


def test_unknown_placeholders_are_refused():
    with pytest.raises(KeyError):
        chain.fill("listen ${DLKIT_NOPE};", {})


def test_the_layer_of_an_answer():
    problem = {"Content-Type": "application/problem+json"}
    assert layer_of(200, {}) == "ok"
    assert layer_of(404, problem) == "client-error"
    assert layer_of(504, problem) == "app"
    assert layer_of(504, {**problem, "X-Dlkit-Layer": "lb"}) == "lb"
    assert layer_of(524, {**problem, "X-Dlkit-Layer": "edge"}) == "edge"
    # What the real services send (no X-Dlkit-Layer): Cloudflare, an AWS ALB, a stock nginx.
    assert (
        layer_of(524, {"Server": "cloudflare", "cf-ray": "8c1d2e3f4a5b6c7d-AMS", "Content-Type": "text/html"}) == "edge"
    )
    assert layer_of(502, {"Server": "cloudflare", "Content-Type": "text/html; charset=UTF-8"}) == "edge"
    # Relayed through Cloudflare, the origin's answer keeps its content type: still the app's.
    assert layer_of(504, {"Server": "cloudflare", "cf-ray": "1", **problem}) == "app"
    assert layer_of(504, {"Server": "awselb/2.0", "Content-Type": "text/html"}) == "lb"
    assert layer_of(504, {"Server": "nginx/1.27.0", "Content-Type": "text/html"}) == "nginx"
    assert layer_of(500, {"Server": "gunicorn", "Content-Type": "text/html"}) == "unknown"


def test_compound_durations_are_read_once_by_the_audit_and_the_local_chain(tmp_path):
    """nginx durations have one reader (dlkit.kit.timeouts.nginx_seconds): `1m30s` and keepalive's two
    values mean the same to the audit and to the local chain that scales them."""
    from dlkit.kit.chain import config_with_timeouts
    from dlkit.kit.stack import Stack, free_base_port
    from dlkit.kit.timeouts import LEGACY_ROUTE, read_chain

    root = config_with_timeouts(tmp_path / "cfg", {})
    template = root / chain.NGINX_TEMPLATE
    text = template.read_text()
    text, found = re.subn(
        r"(location = /v1/download/start \{[^}]*?proxy_read_timeout )\w+;", r"\g<1>1m30s;", text, flags=re.S
    )
    assert found == 1
    text, found = re.subn(r"^    keepalive_timeout 75s;", "    keepalive_timeout 1m15s 60s;", text, flags=re.M)
    assert found == 1
    template.write_text(text)

    audited = read_chain(root).nginx
    assert audited.location(LEGACY_ROUTE).proxy_read_timeout.seconds == 90
    assert audited.server_keepalive_timeout.seconds == 75

    stack = Stack(
        tmp_path / "home",
        free_base_port(),
        time_scale=0.1,
        config_root=root,
        prometheus=False,
        env={"REDIS_URL": "redis://127.0.0.1:1/0", "S3_ENDPOINT": "http://127.0.0.1:1"},
    )
    rendered = stack.proxy_files("nginx")["dlkit.conf"]
    start = re.search(r"location = /v1/download/start \{[^}]*\}", rendered, re.S)[0]
    assert "proxy_read_timeout 9000ms;" in start
    assert "keepalive_timeout 7500ms 6s;" in rendered
