"""Traces, JSON logs and error tracking for the API and the workers, set up in one place.

Off by default and then nearly free: nothing below the OpenTelemetry API is imported, no span is
made, and a log line only gains the request and job ids. On with the standard variables:

- OTEL_TRACES_EXPORTER: `otlp` (OTLP over HTTP; OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, ...), `console`
  (one JSON line per span on stdout), comma-separated for several; unset or `none`: no tracing.
- TRACES_FILE (the kit's own): also append spans as JSON lines to this file (the embedded stack).
- OTEL_TRACES_SAMPLER / _ARG, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*: read by the SDK.
- SENTRY_DSN: exceptions of the API and the workers to Sentry, tagged with the job id and file count.

The trace crosses the queue in the RQ job's meta (`traceparent`): `carrier()` at initiate, `traced_job`
around the job function in the work horse, whose span is the child of the API's request span.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from flask import g, has_request_context, request
from opentelemetry import propagate, trace
from pythonjsonlogger.json import JsonFormatter

from dlkit.settings import Settings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("dlkit")

# The job a worker is running, for its log lines.
_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("dlkit_job_id", default=None)
_state = {"tracing": False, "sentry": False}
# Never sent to Sentry: a client that went away mid-request is not a bug of ours.
CLIENT_NETWORK_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


# -- set-up ------------------------------------------------------------------------------------------


def setup(settings: Settings, service: str) -> None:
    """Start tracing and Sentry as `settings` ask, once per process (gunicorn calls it in each worker
    through create_app, after the fork; a work horse inherits its RQ worker's set-up)."""
    exporters = [name.strip() for name in settings.OTEL_TRACES_EXPORTER.split(",") if name.strip()]
    exporters = [name for name in exporters if name != "none"]
    if (exporters or settings.TRACES_FILE) and not _state["tracing"]:
        _start_tracing(exporters, settings.TRACES_FILE, settings.OTEL_EXPORTER_OTLP_ENDPOINT, service)
    if settings.SENTRY_DSN and not _state["sentry"]:
        _start_sentry(settings.SENTRY_DSN)


def _start_tracing(exporters: list[str], traces_file: str, otlp_endpoint: str, service: str) -> None:
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))  # OTEL_SERVICE_NAME wins
    provider.sampler = _no_orphan_client_spans(provider.sampler)  # the sampler OTEL_TRACES_SAMPLER chose
    for name in exporters:
        if name in ("otlp", "otlp_proto_http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Unset: the SDK's default (localhost:4318) or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.
            endpoint = f"{otlp_endpoint.rstrip('/')}/v1/traces" if otlp_endpoint else None
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(formatter=_span_line)))
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: this kit knows otlp, console and none")
    if traces_file:
        out = open(traces_file, "a", buffering=1)  # open for the life of the process
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=out, formatter=_span_line)))
    trace.set_tracer_provider(provider)
    RedisInstrumentor().instrument()
    BotocoreInstrumentor().instrument()
    _state["tracing"] = True


def _span_line(span) -> str:
    return span.to_json(indent=None) + "\n"


def _no_orphan_client_spans(inner):
    """The sampler, except that a Redis or S3 call made outside any request or job (RQ's own loop,
    heartbeats, a /metrics scrape) starts no trace of its own."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class NoOrphanClientSpans(Sampler):
        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, **kw):
            if kind == trace.SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
                return SamplingResult(Decision.DROP)
            return inner.should_sample(parent_context, trace_id, name, kind, attributes, links, **kw)

        def get_description(self) -> str:
            return f"NoOrphanClientSpans{{{inner.get_description()}}}"

    return NoOrphanClientSpans()


def _start_sentry(dsn: str) -> None:
    import sentry_sdk
    from werkzeug.exceptions import ClientDisconnected

    sentry_sdk.init(dsn=dsn, ignore_errors=[*CLIENT_NETWORK_ERRORS, ClientDisconnected])
    _state["sentry"] = True


def instrument_app(app) -> None:
    """Flask spans (not for /health and /metrics, which probes and scrapers call all day unless
    OTEL_PYTHON_FLASK_EXCLUDED_URLS says otherwise), the trace id in a `traceresponse` header (W3C
    Trace Context level 2; the access log reads it), and Sentry tags from the job in the path."""
    if _state["tracing"]:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        excluded = os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS", r"/health$,/metrics$")
        FlaskInstrumentor().instrument_app(app, excluded_urls=excluded)

        @app.after_request
        def _traceresponse(response):
            context = trace.get_current_span().get_span_context()
            if context.trace_flags.sampled:
                response.headers["traceresponse"] = f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
            return response

    if _state["sentry"]:
        import sentry_sdk

        @app.before_request
        def _sentry_tags():
            if request.view_args and "job_id" in request.view_args:
                sentry_sdk.set_tag("download.jobId", request.view_args["job_id"])
            body = request.get_json(silent=True) if request.is_json else None
            if isinstance(body, dict) and isinstance(body.get("file_ids"), list):
                sentry_sdk.set_tag("download.fileCount", len(body["file_ids"]))


# -- the trace across the queue ----------------------------------------------------------------------


def carrier() -> dict[str, str]:
    """The current trace context as RQ job meta ({"traceparent": ...}); empty when tracing is off."""
    meta: dict[str, str] = {}
    if _state["tracing"]:
        propagate.inject(meta)
    return meta


def trace_id() -> str | None:
    """The current trace id (32 hex digits), or None outside a sampled trace (a trace the sampler
    dropped, or a Redis call of RQ's own loop, is recorded nowhere: its id would lead nowhere)."""
    if not _state["tracing"]:
        return None
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.trace_flags.sampled else None


def traced_job(function: Callable[[str], dict]) -> Callable[[str], dict]:
    """Around an RQ job function `f(job_id) -> {"status": ...}`: a span per job, child of the request
    that enqueued it, with `download.jobId` and a status event at the end; the job id on every log line."""

    @functools.wraps(function)
    def run(job_id: str) -> dict:
        token = _job_id.set(job_id)
        try:
            with _job_span(job_id) as span:
                log.info("job %s picked up", job_id)
                try:
                    result = function(job_id)
                except BaseException as exc:
                    if span is not None:
                        span.add_event("download.status", {"status": "failed", "error": type(exc).__name__})
                    raise
                status = result.get("status") or result.get("skipped") or "unknown"
                if span is not None:
                    span.add_event("download.status", {"status": status})
                log.info("job %s ended: %s", job_id, status)
                return result
        finally:
            _job_id.reset(token)
            if _state["tracing"]:
                # The work horse leaves with os._exit: the batch processor's queue must go out now.
                trace.get_tracer_provider().force_flush()

    return run


@contextlib.contextmanager
def _job_span(job_id: str) -> Iterator[trace.Span | None]:
    if not _state["tracing"]:
        yield None
        return
    from rq import get_current_job

    parent = propagate.extract(get_current_job().meta or {})
    with tracer.start_as_current_span(
        "download.job", context=parent, kind=trace.SpanKind.CONSUMER, attributes={"download.jobId": job_id}
    ) as span:
        yield span


def job_started(job) -> None:
    """The job (a dlkit.jobs.Job) is processing: its size on the span and on Sentry events."""
    if _state["tracing"]:
        span = trace.get_current_span()
        span.set_attribute("download.fileCount", job.total_files)
        span.add_event("download.status", {"status": "processing"})
    if _state["sentry"]:
        import sentry_sdk

        sentry_sdk.set_tag("download.jobId", job.id)
        sentry_sdk.set_tag("download.fileCount", job.total_files)


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A child span (one file, the upload); nothing at all when tracing is off."""
    if not _state["tracing"]:
        yield
        return
    with tracer.start_as_current_span(name, attributes={f"download.{k}": v for k, v in attributes.items()}):
        yield


# -- JSON logs ---------------------------------------------------------------------------------------


class ContextFilter(logging.Filter):
    """Adds request_id, job_id, trace_id and span_id to a record where there are any, and turns a
    gunicorn access record (its args are gunicorn's atoms) into fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            _access_fields(record, record.args)
            return True
        if has_request_context():
            record.request_id = g.get("request_id")
            if request.view_args and "job_id" in request.view_args:
                record.job_id = request.view_args["job_id"]
        job_id = _job_id.get()
        if job_id:
            record.job_id = job_id
        if _state["tracing"]:
            context = trace.get_current_span().get_span_context()
            if context.trace_flags.sampled:
                record.trace_id = f"{context.trace_id:032x}"
                record.span_id = f"{context.span_id:016x}"
        return True


_JOB_PATH = re.compile(r"^/v1/download/(?:status/|events/|cancel/)?([0-9a-f]{8}-[0-9a-f-]{27})$")


def _access_fields(record: logging.LogRecord, atoms) -> None:
    record.remote = atoms["h"]
    record.method = atoms["m"]
    record.path = atoms["U"]
    record.status = int(atoms["s"]) if str(atoms["s"]).isdigit() else atoms["s"]
    record.duration_ms = int(atoms["M"])
    record.bytes = atoms["B"]
    if atoms["{x-request-id}o"] != "-":
        record.request_id = atoms["{x-request-id}o"]
    traceresponse = atoms["{traceresponse}o"]
    if traceresponse != "-":
        record.trace_id = traceresponse.split("-")[1]
    # The job: in the path (status, download, events, cancel), or where initiate sends the client.
    job = _JOB_PATH.match(atoms["U"]) or _JOB_PATH.match(atoms["{location}o"])
    if job:
        record.job_id = job[1]


def json_formatter() -> JsonFormatter:
    return JsonFormatter(
        "{asctime}{levelname}{name}{process}{message}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
    )


def logging_config(access_stream: str = "ext://sys.stdout") -> dict:
    """dictConfig for JSON lines on stderr (gunicorn's access log on `access_stream`)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": json_formatter}},
        "filters": {"context": {"()": ContextFilter}},
        "handlers": {
            "json": {**handler, "stream": "ext://sys.stderr"},
            "access": {**handler, "stream": access_stream},
        },
        "root": {"level": "INFO", "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["json"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
    }


def configure_logging() -> None:
    """JSON lines on stderr for a process that is not gunicorn (the RQ workers)."""
    import logging.config

    logging.config.dictConfig(logging_config())
