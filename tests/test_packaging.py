"""The runtime stays apart from the tooling: what `pip install .` (the container image, infra/Dockerfile)
brings is only what the API and the workers import, read from the installed distributions' metadata."""

from __future__ import annotations

import ast
import tomllib
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dlkit.kit import ROOT

# The kit's tooling and test dependencies: none may reach the runtime image.
NOT_IN_RUNTIME = {
    "locust",
    "matplotlib",
    "python-hcl2",
    "lark",
    "crossplane",
    "mirakuru",
    "pyyaml",
    "grafana-foundation-sdk",
    "pytest",
    "schemathesis",
    "playwright",
}


def closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Every distribution `name` (with `extras`) needs, as installed here, following markers."""
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        current, wanted = todo.pop()
        key = canonicalize_name(current)
        if (key, wanted) in seen:
            continue
        seen.add((key, wanted))
        try:
            requirements = distribution(current).requires or []
        except PackageNotFoundError:
            continue  # a marker-less optional dependency not installed here is not needed either
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker and not any(
                requirement.marker.evaluate({"extra": extra}) for extra in (wanted or {""})
            ):
                continue
            todo.append((requirement.name, frozenset(requirement.extras)))
    return {key for key, _ in seen} - {canonicalize_name(name)}


def test_the_runtime_image_carries_no_tooling():
    runtime = closure("dlkit")
    assert {"flask", "rq", "boto3", "gunicorn", "prometheus-client"} <= runtime
    assert not runtime & NOT_IN_RUNTIME, sorted(runtime & NOT_IN_RUNTIME)


def test_the_kit_extra_brings_the_tooling():
    assert {"locust", "matplotlib", "python-hcl2", "mirakuru"} <= closure("dlkit", frozenset({"kit"}))


def _imports(*paths) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return names


def test_the_api_and_the_workers_never_import_the_tooling():
    # The runtime is app/, worker/ and the modules directly in dlkit/ (settings, jobs, storage, ...).
    for where, paths in (
        ("app/", (ROOT / "app").rglob("*.py")),
        ("worker/", (ROOT / "worker").rglob("*.py")),
        ("dlkit/*.py", (ROOT / "dlkit").glob("*.py")),
    ):
        tooling = {name for name in _imports(*paths) if name == "dlkit.kit" or name.startswith("dlkit.kit.")}
        assert not tooling, f"{where} imports {tooling}"


def test_the_image_installs_the_runtime_only():
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    assert "pip wheel --no-cache-dir --wheel-dir /wheels .\n" in dockerfile, "the image must build `.`, no extras"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {canonicalize_name(Requirement(line).name) for line in project["dependencies"]}
    assert not names & NOT_IN_RUNTIME
