"""The timeout model of the request chain, read from the real config files of a checkout.

    client -> Cloudflare (proxy/cloudflare) -> ALB (proxy/alb) -> nginx (proxy/nginx)
           -> gunicorn (app/gunicorn_conf.py) -> Flask app (dlkit/settings.py)

and how the deployments use those files (`read_deployment`): the ALB's health check, the idle
timeout infra/terraform passes to proxy/alb, the nginx config and any timeout variable in
docker-compose.yml.

Every value carries the file and line it came from, so `dlkit audit` can point at the line to change
and the local stack can render its scaled copy from the same numbers. Nothing is hand-copied: change
a config file and the model follows. Values are real (unscaled) seconds.

Line 0 means the file does not set the value and the program's documented default applies.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import crossplane
import yaml
from hcl2.query import DocumentView
from lark.exceptions import LarkError

from dlkit.kit import ROOT

CLOUDFLARE_VARIABLES = Path("proxy/cloudflare/variables.tf")
ALB_VARIABLES = Path("proxy/alb/variables.tf")
NGINX_CONF = Path("proxy/nginx/dlkit.conf.template")
GUNICORN_CONF = Path("app/gunicorn_conf.py")
SETTINGS = Path("dlkit/settings.py")
# Every file read_chain reads, relative to the root.
FILES = (CLOUDFLARE_VARIABLES, ALB_VARIABLES, NGINX_CONF, GUNICORN_CONF, SETTINGS)

ALB_MAIN = Path("proxy/alb/main.tf")
COMPOSE = Path("docker-compose.yml")
STAGING = Path("infra/terraform")  # a directory: every *.tf in it
ALB_MODULE_SOURCE = "../../proxy/alb"
# Where the official nginx image's entrypoint looks for templates to render (envsubst).
NGINX_TEMPLATES_DIR = "/etc/nginx/templates/"
# The nginx location of the legacy synchronous route.
LEGACY_ROUTE = "= /v1/download/start"
# Environment variables that change a value read_chain reads from a file (or, TIME_SCALE, scale the
# app's durations but not nginx's). Set in compose, they make the running chain differ from the audited one.
TIMEOUT_ENV = (
    "REQUEST_TIMEOUT_MS",
    "POLL_INTERVAL_S",
    "SSE_HEARTBEAT_S",
    "DOWNLOAD_DELAY_MIN_MS",
    "DOWNLOAD_DELAY_MAX_MS",
    "GUNICORN_WORKER_CLASS",
    "GUNICORN_KEEPALIVE_S",
    "GUNICORN_TIMEOUT_S",
    "TIME_SCALE",
    "PREFER_WAIT_MAX_S",
)

# Cloudflare's default Proxy Read Timeout, which every zone but an Enterprise one keeps (only
# Enterprise can change it): 100 s in its long-standing documentation, 125 s on the newer pages.
# proxy/cloudflare writes its value only with enterprise = true, and records one of these otherwise.
CLOUDFLARE_DEFAULT_READ_TIMEOUTS_S = (100.0, 125.0)

# nginx's documented defaults for what the template may leave out.
NGINX_PROXY_TIMEOUT_DEFAULT_S = 60.0  # proxy_connect/send/read_timeout
NGINX_KEEPALIVE_TIMEOUT_DEFAULT_S = 75.0  # keepalive_timeout in http/server/location
NGINX_UPSTREAM_KEEPALIVE_TIMEOUT_DEFAULT_S = 60.0  # keepalive_timeout in upstream
# gunicorn's documented defaults.
GUNICORN_DEFAULTS = {"worker_class": "sync", "timeout": 30.0, "keepalive": 2.0}

PROXY_TIMEOUTS = ("proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout")
APP_SETTINGS = (
    "REQUEST_TIMEOUT_MS",
    "POLL_INTERVAL_S",
    "SSE_HEARTBEAT_S",
    "DOWNLOAD_DELAY_MIN_MS",
    "DOWNLOAD_DELAY_MAX_MS",
    "PREFER_WAIT_MAX_S",
)
# The nginx location of initiate, which `Prefer: wait=N` holds silent for up to PREFER_WAIT_MAX_S.
INITIATE_ROUTE = "= /v1/download/initiate"

_NGINX_TIME = re.compile(r"(\d+)(ms|s|m|h|d|w|M|y)?")
# nginx time units in seconds (a bare number is seconds); "M" is 30 days and "y" 365, as nginx has it.
_NGINX_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}


class ConfigError(Exception):
    """A config file is missing or cannot be read; the message starts with the file's path."""


@dataclass(frozen=True)
class Setting:
    name: str  # e.g. "proxy_read_timeout", "idle_timeout", "REQUEST_TIMEOUT_MS"
    seconds: float  # durations normalised to seconds (nginx units: ms s m h; settings *_MS /1000)
    file: Path  # relative to root
    line: int  # 1-based line of the value; 0 when the file leaves it to the default

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else f"{self.file} (not set: default)"


class Level(str, Enum):
    """Where an nginx location's effective value was written (nginx inherits downwards)."""

    LOCATION = "location"
    SERVER = "server"
    HTTP = "http"  # the template's top level, included in nginx's http block
    DEFAULT = "default"


@dataclass(frozen=True)
class Location:
    match: str  # as written after `location`: "= /v1/download/start", "/v1/download/status/"
    line: int
    proxy_connect_timeout: Setting
    proxy_send_timeout: Setting
    proxy_read_timeout: Setting
    # Level of each of PROXY_TIMEOUTS, in that order.
    levels: tuple[Level, Level, Level]
    proxy_buffering_off: bool

    def level(self, directive: str) -> Level:
        return self.levels[PROXY_TIMEOUTS.index(directive)]


@dataclass(frozen=True)
class Nginx:
    server_keepalive_timeout: Setting  # client side: how long nginx keeps an idle connection from the LB
    upstream_keepalive_timeout: Setting  # upstream side: how long nginx keeps an idle connection to gunicorn
    locations: tuple[Location, ...]  # the server's top-level locations, in file order

    def location(self, match: str) -> Location:
        for location in self.locations:
            if location.match == match:
                return location
        raise KeyError(match)


@dataclass(frozen=True)
class Gunicorn:
    worker_class: str
    worker_class_line: int  # 0 when not set (gunicorn's default, "sync")
    timeout: Setting
    keepalive: Setting


@dataclass(frozen=True)
class App:
    REQUEST_TIMEOUT_MS: Setting
    POLL_INTERVAL_S: Setting
    SSE_HEARTBEAT_S: Setting
    DOWNLOAD_DELAY_MIN_MS: Setting
    DOWNLOAD_DELAY_MAX_MS: Setting
    PREFER_WAIT_MAX_S: Setting


@dataclass(frozen=True)
class Chain:
    edge_read_timeout: Setting  # Cloudflare Proxy Read Timeout (silence -> 524)
    lb_idle_timeout: Setting  # ALB idle timeout (silence -> 504)
    nginx: Nginx
    gunicorn: Gunicorn
    app: App


@dataclass(frozen=True)
class Value:
    """A non-duration value found in a deployment file, with its place."""

    value: str
    file: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Deployment:
    alb_health_check_path: Value  # proxy/alb target group's health_check path
    # idle_timeout passed to proxy/alb by infra/terraform: None when it keeps the module default,
    # or when there is no infra/terraform (staging_uses_alb False then too).
    staging_idle_timeout: Setting | None
    staging_uses_alb: bool | None  # None: no infra/terraform directory
    # Host paths bound into the nginx image's template directory, by compose (empty: none);
    # None when there is no docker-compose.yml.
    compose_nginx_templates: tuple[Value, ...] | None
    compose_timeout_env: tuple[Value, ...]  # "NAME=value" of every TIMEOUT_ENV variable compose sets


def read_chain(root: Path = ROOT) -> Chain:
    """The whole chain's timeouts from the config files under `root`. Raises ConfigError."""
    root = Path(root)
    return Chain(
        edge_read_timeout=_terraform_default(root, CLOUDFLARE_VARIABLES, "proxy_read_timeout"),
        lb_idle_timeout=_terraform_default(root, ALB_VARIABLES, "idle_timeout"),
        nginx=_read_nginx(root, NGINX_CONF),
        gunicorn=_read_gunicorn(root, GUNICORN_CONF),
        app=_read_settings(root, SETTINGS),
    )


def read_deployment(root: Path = ROOT) -> Deployment:
    """How infra/terraform and docker-compose.yml use the chain's files. Raises ConfigError.

    proxy/alb/main.tf is required; docker-compose.yml and infra/terraform are optional (a fork may
    keep only some deployments), and their checks are left out when absent.
    """
    root = Path(root)
    idle, uses_alb = None, None
    if (root / STAGING).is_dir():
        idle, uses_alb = _staging_idle_timeout(root)
    templates, env = None, ()
    if (root / COMPOSE).is_file():
        templates, env = _read_compose(root, COMPOSE)
    return Deployment(
        alb_health_check_path=_alb_health_check_path(root, ALB_MAIN),
        staging_idle_timeout=idle,
        staging_uses_alb=uses_alb,
        compose_nginx_templates=templates,
        compose_timeout_env=env,
    )


def is_sync_worker(worker_class: str) -> bool:
    """gunicorn's sync workers: one request at a time, killed when silent past `timeout`."""
    return worker_class in ("sync", "gunicorn.workers.sync.SyncWorker")


@dataclass(frozen=True)
class Cut:
    """One layer's timeout on the legacy route, which sends nothing until its work is done, so
    every idle or read timeout on the way is a total one."""

    layer: str  # "app", "gunicorn" (sync workers only), "nginx", "lb", "edge"
    label: str  # the setting as a reader knows it: "nginx proxy_read_timeout"
    setting: Setting
    location: Location | None = None


def legacy_route_cuts(chain: Chain, app_timeout_s: float | None = None) -> list[Cut]:
    """Every timeout on the legacy `start` route, the one that fires first at the front.

    The one reading of "which layer cuts first", for `dlkit audit` and `dlkit demo`.
    `app_timeout_s` replaces the file's REQUEST_TIMEOUT_MS default with what a process really runs
    with (its environment). Inner layers first, and the sort is stable: on a tie the innermost
    fires and the others relay its answer.
    """
    app = chain.app.REQUEST_TIMEOUT_MS
    if app_timeout_s is not None:
        app = Setting(app.name, app_timeout_s, app.file, app.line)
    location = chain.nginx.location(LEGACY_ROUTE)
    cuts = [Cut("app", "app REQUEST_TIMEOUT_MS", app)]
    if is_sync_worker(chain.gunicorn.worker_class):
        cuts.append(Cut("gunicorn", "gunicorn sync timeout", chain.gunicorn.timeout))
    cuts += [
        Cut("nginx", "nginx proxy_read_timeout", location.proxy_read_timeout, location),
        Cut("lb", "ALB idle_timeout", chain.lb_idle_timeout),
        Cut("edge", "Cloudflare proxy_read_timeout", chain.edge_read_timeout),
    ]
    return sorted(cuts, key=lambda cut: cut.setting.seconds)


def cut_share(timeout_s: float, min_s: float, max_s: float) -> float:
    """Share of requests cut by `timeout_s` when their work is uniform on [min_s, max_s]."""
    if max_s <= min_s:  # every request takes the same time
        return 1.0 if timeout_s < max_s else 0.0
    return min(1.0, max(0.0, (max_s - timeout_s) / (max_s - min_s)))


def _read_text(root: Path, relative: Path) -> str:
    try:
        return (root / relative).read_text()
    except OSError as error:
        raise ConfigError(f"{relative}: cannot read it ({error.strerror})") from None


# Terraform ------------------------------------------------------------------------------------


def _parse_hcl(root: Path, relative: Path) -> DocumentView:
    text = _read_text(root, relative)
    try:
        return DocumentView.parse(text)
    except LarkError as error:  # python-hcl2 parses with lark and lets its errors through
        raise ConfigError(f"{relative}: not valid HCL: {str(error).splitlines()[0]}") from None


def _line(attribute) -> int:
    # python-hcl2 8.x ignores with_meta (amplify-education/python-hcl2#291); the parse tree still
    # carries lark's positions, which is where the library's own `hq --with-location` reads them.
    return attribute.value_node.raw._meta.line


def _unquote(value) -> str:
    return value[1:-1] if isinstance(value, str) and value.startswith('"') and value.endswith('"') else str(value)


def _terraform_default(root: Path, relative: Path, variable: str) -> Setting:
    """The literal `default` of `variable "<name>"`, in seconds."""
    document = _parse_hcl(root, relative)
    blocks = document.blocks("variable", variable)
    default = blocks[0].attribute("default") if blocks else None
    if default is None:
        raise ConfigError(f'{relative}: no `default` in variable "{variable}"')
    value = default.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f'{relative}: the default of variable "{variable}" is not a number: {value!r}')
    return Setting(variable, float(value), relative, _line(default))


def _alb_health_check_path(root: Path, relative: Path) -> Value:
    document = _parse_hcl(root, relative)
    for group in document.blocks("resource", "aws_lb_target_group"):
        for check in group.blocks("health_check"):
            path = check.attribute("path")
            if path is not None:
                return Value(_unquote(path.value), relative, _line(path))
    raise ConfigError(f"{relative}: no aws_lb_target_group with a health_check path")


def _staging_idle_timeout(root: Path) -> tuple[Setting | None, bool]:
    """The idle_timeout infra/terraform passes to proxy/alb (None: the default), and whether it uses it."""
    for path in sorted((root / STAGING).glob("*.tf")):
        relative = path.relative_to(root)
        for module in _parse_hcl(root, relative).blocks("module"):
            source = module.attribute("source")
            if source is None or _unquote(source.value) != ALB_MODULE_SOURCE:
                continue
            idle = module.attribute("idle_timeout")
            if idle is None:
                return None, True
            value = idle.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{relative}:{_line(idle)}: idle_timeout is not a literal number: {value!r}")
            return Setting("idle_timeout", float(value), relative, _line(idle)), True
    return None, False


# docker-compose.yml ----------------------------------------------------------------------------


def _read_compose(root: Path, relative: Path) -> tuple[tuple[Value, ...], tuple[Value, ...]]:
    """Template binds into the nginx image, and timeout variables set anywhere in the file.

    Read from YAML nodes, not values, to keep line numbers; anchors and `<<` merges are walked as
    written, so a variable set once in an `x-` block is reported at that line.
    """
    try:
        document = yaml.compose(_read_text(root, relative))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise ConfigError(f"{relative}:{mark.line + 1 if mark else 0}: not valid YAML") from None
    templates, env = [], []
    seen: set[int] = set()

    def walk(node, key: str | None = None) -> None:
        if id(node) in seen:  # an alias is the anchored node again
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for name, value in node.value:
                if name.value in TIMEOUT_ENV and isinstance(value, yaml.ScalarNode):
                    env.append(Value(f"{name.value}={value.value}", relative, name.start_mark.line + 1))
                walk(value, name.value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                if isinstance(item, yaml.ScalarNode):
                    text, line = item.value, item.start_mark.line + 1
                    name = text.partition("=")[0]
                    if key == "environment" and name in TIMEOUT_ENV:
                        env.append(Value(text, relative, line))
                    if key == "volumes":
                        parts = text.split(":")
                        if len(parts) >= 2 and parts[1].startswith(NGINX_TEMPLATES_DIR):
                            templates.append(Value(parts[0], relative, line))
                elif key == "volumes" and isinstance(item, yaml.MappingNode):
                    fields = {k.value: v for k, v in item.value if isinstance(v, yaml.ScalarNode)}
                    target, source = fields.get("target"), fields.get("source")
                    if target is not None and source is not None and target.value.startswith(NGINX_TEMPLATES_DIR):
                        templates.append(Value(source.value, relative, source.start_mark.line + 1))
                else:
                    walk(item, key)

    walk(document)
    return tuple(templates), tuple(env)


# nginx ----------------------------------------------------------------------------------------


def nginx_seconds(value: str, relative: Path | str = "nginx", line: int = 0) -> float:
    """nginx time syntax ("500ms", "75s", "1m30s", "60") in seconds."""
    parts = _NGINX_TIME.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise ConfigError(f"{relative}:{line}: not an nginx time: {value!r}")
    return float(sum(int(number) * _NGINX_UNITS[unit or "s"] for number, unit in parts))


def _directives(block: list[dict]) -> dict[str, dict]:
    """The last occurrence of each simple directive of a block (nginx refuses duplicates anyway)."""
    return {d["directive"]: d for d in block if "block" not in d}


def _read_nginx(root: Path, relative: Path) -> Nginx:
    _read_text(root, relative)  # a clear error for a missing file, before crossplane's own
    # The template is an http-context fragment (top-level upstream and map), so crossplane must not
    # check contexts; nor arguments: `nginx -t` is the authority on validity, this only reads values.
    # ${DLKIT_*} placeholders lex as ordinary tokens (crossplane keeps `${...}` together; it glues
    # the next argument onto a placeholder, which affects none of the directives read here).
    payload = crossplane.parse(str(root / relative), single=True, check_ctx=False, check_args=False, comments=False)
    if payload["status"] != "ok":
        error = payload["errors"][0]
        raise ConfigError(f"{relative}:{error.get('line') or 0}: {error['error']}")
    top = payload["config"][0]["parsed"]
    servers = [d for d in top if d["directive"] == "server"]
    upstreams = [d for d in top if d["directive"] == "upstream"]
    if len(servers) != 1 or len(upstreams) != 1:
        raise ConfigError(
            f"{relative}: expected one server and one upstream block, found {len(servers)} and {len(upstreams)}"
        )

    def setting(directive: dict | None, name: str, default: float) -> Setting:
        if directive is None:
            return Setting(name, default, relative, 0)
        return Setting(
            name, nginx_seconds(directive["args"][0], relative, directive["line"]), relative, directive["line"]
        )

    http, server = _directives(top), _directives(servers[0]["block"])
    upstream = _directives(upstreams[0]["block"])
    keepalive = server.get("keepalive_timeout") or http.get("keepalive_timeout")

    locations = []
    for block in servers[0]["block"]:
        if block["directive"] != "location":
            continue
        here = _directives(block["block"])
        scopes = ((Level.LOCATION, here), (Level.SERVER, server), (Level.HTTP, http))
        timeouts, levels = [], []
        for name in PROXY_TIMEOUTS:
            # nginx inherits a directive from the nearest enclosing level that sets it.
            level, directive = next(
                ((level, scope[name]) for level, scope in scopes if name in scope), (Level.DEFAULT, None)
            )
            timeouts.append(setting(directive, name, NGINX_PROXY_TIMEOUT_DEFAULT_S))
            levels.append(level)
        buffering = next((scope["proxy_buffering"] for _, scope in scopes if "proxy_buffering" in scope), None)
        locations.append(
            Location(
                match=" ".join(block["args"]),
                line=block["line"],
                proxy_connect_timeout=timeouts[0],
                proxy_send_timeout=timeouts[1],
                proxy_read_timeout=timeouts[2],
                levels=tuple(levels),
                proxy_buffering_off=buffering is not None and buffering["args"] == ["off"],
            )
        )

    return Nginx(
        server_keepalive_timeout=setting(keepalive, "keepalive_timeout", NGINX_KEEPALIVE_TIMEOUT_DEFAULT_S),
        upstream_keepalive_timeout=setting(
            upstream.get("keepalive_timeout"), "keepalive_timeout", NGINX_UPSTREAM_KEEPALIVE_TIMEOUT_DEFAULT_S
        ),
        locations=tuple(locations),
    )


# Python config files ---------------------------------------------------------------------------


def _parse_python(root: Path, relative: Path) -> ast.Module:
    try:
        return ast.parse(_read_text(root, relative), filename=str(relative))
    except SyntaxError as error:
        raise ConfigError(f"{relative}:{error.lineno}: {error.msg}") from None


def _literal_default(value: ast.expr) -> ast.Constant | None:
    """The literal a gunicorn setting falls back to: `30`, or the default of
    `os.environ.get(NAME, "30")` / `os.getenv(NAME, "30")` wherever it sits (e.g. inside int())."""
    if isinstance(value, ast.Constant):
        return value
    for node in ast.walk(value):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "getenv")
            and len(node.args) == 2
            and isinstance(node.args[1], ast.Constant)
        ):
            return node.args[1]
    return None


def _read_gunicorn(root: Path, relative: Path) -> Gunicorn:
    found: dict[str, ast.Constant] = {}
    for statement in _parse_python(root, relative).body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name) and target.id in GUNICORN_DEFAULTS:
                literal = _literal_default(statement.value)
                if literal is None:
                    raise ConfigError(f"{relative}:{statement.lineno}: `{target.id}` has no literal default")
                found[target.id] = literal

    def seconds(name: str) -> Setting:
        if name not in found:
            return Setting(name, GUNICORN_DEFAULTS[name], relative, 0)
        try:
            return Setting(name, float(found[name].value), relative, found[name].lineno)
        except (TypeError, ValueError):
            raise ConfigError(f"{relative}:{found[name].lineno}: `{name}` is not a number") from None

    worker_class = found.get("worker_class")
    return Gunicorn(
        worker_class=str(worker_class.value) if worker_class else GUNICORN_DEFAULTS["worker_class"],
        worker_class_line=worker_class.lineno if worker_class else 0,
        timeout=seconds("timeout"),
        keepalive=seconds("keepalive"),
    )


def _read_settings(root: Path, relative: Path) -> App:
    """Field defaults of `class Settings`: `NAME: int = 30_000` or `NAME: int = Field(30_000, ...)`."""
    module = _parse_python(root, relative)
    classes = [n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    if not classes:
        raise ConfigError(f"{relative}: no `class Settings`")
    found: dict[str, Setting] = {}
    for statement in classes[0].body:
        if not (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and statement.target.id in APP_SETTINGS
            and statement.value is not None
        ):
            continue
        name, value = statement.target.id, statement.value
        if isinstance(value, ast.Call):  # Field(default, ...) or Field(default=...)
            keywords = {k.arg: k.value for k in value.keywords}
            value = value.args[0] if value.args else keywords.get("default")
        try:
            number = float(ast.literal_eval(value))
        except (ValueError, TypeError, SyntaxError):
            raise ConfigError(f"{relative}:{statement.lineno}: `{name}` has no literal number default") from None
        found[name] = Setting(name, number / 1000 if name.endswith("_MS") else number, relative, value.lineno)
    missing = [name for name in APP_SETTINGS if name not in found]
    if missing:
        raise ConfigError(f"{relative}: `class Settings` has no default for {', '.join(missing)}")
    return App(**found)
