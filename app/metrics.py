"""Prometheus metrics of the API: RED per route, the job transitions the API applies, and the
queue's state read from Redis when Prometheus scrapes `GET /metrics`.

Two modes, chosen by prometheus-client itself when it is first imported:
- PROMETHEUS_MULTIPROC_DIR set (gunicorn, see gunicorn_conf.py): every worker process writes its
  samples to files in that directory and /metrics sums them, so any worker can answer a scrape
  and a restarted worker neither loses nor doubles what the others counted;
- unset (tests in-process, `flask run`): one process, prometheus-client's default registry.

Label values are bounded: `route` is the URL rule template (`/v1/download/status/<job_id>`) or
`unmatched`, never a raw path; statuses and failure reasons come from fixed sets.
"""

from __future__ import annotations

import os
import time

from botocore.exceptions import BotoCoreError, ClientError
from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker

from dlkit import accounting, exemplars, queue_state
from dlkit.jobs import Job, JobStatus, JobStore, Transition
from dlkit.metrics import JOBS_FINISHED
from dlkit.workers import LiveWorkers

# The legacy synchronous call holds its request for up to 120 s (more behind a slow proxy), so
# the buckets go past prometheus-client's default 10 s.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HTTP_REQUESTS = Counter(
    "dlkit_http_requests_total", "HTTP requests answered by the API.", ["route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "dlkit_http_request_duration_seconds",
    "Time the API took to answer, by route.",
    ["route", "method"],
    buckets=HTTP_BUCKETS,
)
JOBS_INITIATED = Counter("dlkit_jobs_initiated_total", "Jobs created (idempotent replays excluded).")

UNMATCHED = "unmatched"
METRICS_PATH = "/metrics"
DOWNLOAD_ROUTE = "/v1/download/<uuid:job_id>"  # its 302 hands out the artifact: dlkit/accounting.py counts it


class MeteredJobStore(JobStore):
    """The API's job store, counting the transitions the API applies: creation and cancel (a lost
    worker's job is re-queued or failed by the workers' sweepers, worker/sweeper.py, which count
    it). Only applied transitions count, so a second
    cancel of the same job (answered 200, idempotent) is not counted twice. Creation and cancel
    also go to the backend accounting (dlkit/accounting.py) that `dlkit demo` reads."""

    def create_counted(self, owner, file_ids, delay_s, enqueue, *args, **kwargs):
        # create() comes here too. The accounting counter is one more write of the create's script: in the
        # same round trip, and counted exactly when the job is created.
        def enqueue_and_count(pipe, job_id: str) -> None:
            enqueue(pipe, job_id)
            accounting.job_created(pipe)

        job, created, count = super().create_counted(owner, file_ids, delay_s, enqueue_and_count, *args, **kwargs)
        if created:
            JOBS_INITIATED.inc()
        return job, created, count

    def cancel(self, job_id: str) -> Transition:
        result = super().cancel(job_id)
        if result.applied:
            JOBS_FINISHED.labels(JobStatus.CANCELLED.value).inc()
            if result.previous is JobStatus.PROCESSING:
                # Work done so far is lost: the worker aborts the upload. Queued jobs cost nothing.
                job = self.get(job_id)
                if job is not None and job.started_at is not None and job.finished_at is not None:
                    accounting.job_cancelled_running(self.redis, min(job.delay_s, job.finished_at - job.started_at))
        return result


class QueueCollector:
    """Job and worker figures read from Redis at scrape time: the queue's state (dlkit/queue_state.py,
    the same reader the staging autoscaling signal uses) and the workers by state (RQ's worker
    registry, one HGETALL per worker; a worker RQ lists that no longer stamps itself live, killed
    without deregistering, is `lost`: dlkit/workers.py).

    Terminal states are counters (dlkit_jobs_finished_total), not read here: counting them from
    Redis would mean scanning every record. Every API instance reports the same cluster-wide
    values, so aggregate these with max(), not sum(). Redis down gives dlkit_redis_up 0 and keeps
    the rest of the scrape (the RED metrics) working.
    """

    def __init__(self, redis: Redis, queue_name: str, live: LiveWorkers, clock=time.time):
        self.redis = redis
        self.queue_name = queue_name
        self.live = live
        self.clock = clock

    def collect(self):
        up = GaugeMetricFamily("dlkit_redis_up", "1 when the API could read the queue state from Redis.")
        try:
            families = self._read()
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[GaugeMetricFamily]:
        state = queue_state.read(self.redis, self.queue_name, self.clock())
        workers = GaugeMetricFamily(
            "dlkit_workers", "RQ workers registered in Redis, by state (lost: no longer live).", labels=["state"]
        )
        states = {"busy": 0, "idle": 0, "other": 0, "lost": 0}
        live = self.live.names()
        for worker in Worker.all(queue=Queue(self.queue_name, connection=self.redis)):
            state_name = getattr(worker.get_state(), "value", worker.get_state())  # WorkerStatus or plain str
            if worker.name not in live:
                state_name = "lost"
            states[state_name if state_name in states else "other"] += 1
        for state_name, count in states.items():
            workers.add_metric([state_name], count)

        jobs = GaugeMetricFamily("dlkit_jobs", "Jobs not yet finished, by status.", labels=["status"])
        jobs.add_metric([JobStatus.QUEUED.value], state.queued)
        jobs.add_metric([JobStatus.PROCESSING.value], state.processing)
        return [
            jobs,
            GaugeMetricFamily(
                "dlkit_queue_oldest_job_age_seconds",
                "Age of the oldest job still queued (0 when the queue is empty).",
                value=state.oldest_queued_age_s,
            ),
            GaugeMetricFamily(
                "dlkit_jobs_processing_max_heartbeat_age_seconds",
                "Oldest heartbeat among processing jobs (0 when none is processing).",
                value=state.max_heartbeat_age_s,
            ),
            workers,
        ]


class StorageCollector:
    """dlkit_storage_up: the HEAD of the artifact bucket that GET /health makes, at scrape time (one
    attempt, short timeouts: app/extensions.py), so an alert can say S3 is unreachable."""

    def __init__(self, s3, bucket: str):
        self.s3 = s3
        self.bucket = bucket

    def collect(self):
        try:
            self.s3.head_bucket(Bucket=self.bucket)
            up = 1
        except (BotoCoreError, ClientError):
            up = 0
        yield GaugeMetricFamily("dlkit_storage_up", "1 when the API could reach the artifact bucket.", value=up)


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED


def _count_download(job: Job) -> None:
    accounting.job_downloaded(current_app.extensions["dlkit"].redis, job.id, job.delay_s)


def metrics_view() -> Response:
    res = current_app.extensions["dlkit"]
    scrape = CollectorRegistry()  # no auto_describe: registering must not read Redis twice
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        # A fresh collector per scrape reads every worker's files now, exemplars included.
        scrape.register(exemplars.Collector(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    else:
        scrape.register(_Default())
    scrape.register(QueueCollector(res.redis, res.settings.QUEUE_NAME, res.live_workers))
    scrape.register(StorageCollector(res.s3, res.settings.S3_BUCKET_NAME))
    # OpenMetrics (the only format with exemplars) when the scraper asks for it, as Prometheus does;
    # the Prometheus text format otherwise.
    accept = request.headers.get("Accept", "")
    if "application/openmetrics-text" in accept:
        encode, content_type = choose_encoder(accept)
    else:
        encode, content_type = generate_latest, CONTENT_TYPE_LATEST
    return Response(encode(scrape), content_type=content_type)


class _Default:
    """prometheus-client's default registry (one process), inside the scrape's registry."""

    def collect(self):
        return REGISTRY.collect()


def install(app: Flask) -> None:
    """Time and count every request, serve GET /metrics, and count the API's job transitions.

    Call before any other hook is registered: before_request hooks run in registration order, so
    this one starts the clock even for requests that a later hook (the rate limiter) refuses.
    """

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _record(response: Response) -> Response:
        # after_request hooks run in reverse order, so this one, registered first, sees the final status.
        # A streamed response (server-sent events) is timed to its first byte, not to its end.
        started = g.pop("metrics_started", None)
        route, method = _route(), request.method
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        if started is not None:
            # With the request's trace id as its exemplar when the request is traced (dlkit/exemplars.py).
            exemplars.observe(HTTP_DURATION, time.perf_counter() - started, HTTP_BUCKETS, route=route, method=method)
        if route == DOWNLOAD_ROUTE and response.status_code == 302:
            _count_download(g.job)  # the job the route answered for (app/routes/jobs.py)
        return response

    app.add_url_rule(METRICS_PATH, "metrics", metrics_view, methods=["GET"])


def attach_store(app: Flask) -> None:
    """Give the app's resources the metered job store (call once app.extensions["dlkit"] exists)."""
    res = app.extensions["dlkit"]
    # Resources.store is a cached_property: setting it replaces the plain store for the app's lifetime.
    res.store = MeteredJobStore(res.redis, res.settings.JOB_TTL_S)
    # Prometheus scrapes every few seconds; its requests must never eat a client's rate limit budget.
    res.limiter.exempt(app.view_functions["metrics"])
