"""The async job API: initiate -> status (poll) -> download (302 to S3), cancel, list.

Every call returns in milliseconds: the work happens in RQ workers (worker/tasks.py), and the
job record (dlkit/jobs.py) is the only state the API and the workers share.
"""

from __future__ import annotations

import hashlib
import json
import math
import time

from flask import Response, current_app, g, stream_with_context
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel

from dlkit import files, telemetry
from dlkit.jobs import IdempotencyConflict, Job, JobStatus, events_channel
from dlkit.storage import presign_download

from ..auth import authenticate, current_owner
from ..hooks import retry_after
from ..problems import Problem
from ..schemas import (
    API_ROUTE,
    WITH_BODY,
    InitiateHeaders,
    InitiateRequest,
    InitiateResponse,
    JobList,
    JobPath,
    JobStatusResponse,
    ListQuery,
    problems,
)

bp = APIBlueprint(
    "jobs", __name__, url_prefix="/v1", abp_tags=[Tag(name="jobs (asynchronous)")], abp_security=[{"apiKey": []}]
)
bp.before_request(authenticate)

# One server-sent event: `status`, whose data is the status document.
EVENT_STREAM = {
    "description": "A `status` event on every change of the job, heartbeat comments in between",
    "content": {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "event": {"const": "status"},
                    "id": {"type": "string"},
                    "retry": {"type": "integer"},
                    "data": {"type": "string", "description": "JSON: the status document (JobStatusResponse)"},
                },
            }
        }
    },
}
WORKER_FUNCTION = "worker.tasks.build_archive"


def _res():
    return current_app.extensions["dlkit"]


def _owned_job(job_id) -> Job:
    """The caller's job, or 404: someone else's job is indistinguishable from a missing one."""
    res = _res()
    job = res.store.get(str(job_id))
    if job is None or job.owner != current_owner():
        raise Problem(404, "Job not found", f"No job {job_id} (unknown, expired, or not yours).", slug="job-not-found")
    g.job = res.store.fail_if_stale(job, res.settings.stale_after_s)  # after_request hooks read it too
    return g.job


def _document(job: Job) -> dict:
    doc = job.to_api()
    if job.status is JobStatus.COMPLETED:
        res = _res()
        doc["downloadUrl"] = presign_download(
            res.s3_public,
            res.settings.S3_BUCKET_NAME,
            job.artifact_key,
            res.settings.download_url_ttl_s,
            f"dlkit-{job.id}.zip",
        )
    return doc


def _poll_headers(job: Job) -> dict[str, str]:
    headers = {"Cache-Control": "no-store"}
    if not job.status.is_terminal:
        headers["Retry-After"] = retry_after(_res().settings.poll_interval_s)
    return headers


def _fingerprint(body: BaseModel) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


@bp.post(
    "/download/initiate",
    summary="Start an asynchronous download job",
    responses={202: InitiateResponse, **problems(*WITH_BODY, 422)},
)
def initiate(body: InitiateRequest, header: InitiateHeaders):
    owner = current_owner()
    res = _res()
    settings = res.settings
    # RQ's own timeout is a backstop far past the longest simulated job plus its upload.
    rq_timeout = math.ceil(settings.scaled(settings.DOWNLOAD_DELAY_MAX_MS / 1000)) + 600

    def enqueue(pipe, job_id: str) -> None:
        # Every RQ key expires: ttl while queued (a job cancelled before a worker took it is never
        # touched again), result_ttl / failure_ttl once a worker has run it.
        rq_job = res.queue.create_job(
            WORKER_FUNCTION,
            args=(job_id,),
            job_id=job_id,
            timeout=rq_timeout,
            ttl=settings.JOB_TTL_S,
            result_ttl=3600,
            failure_ttl=settings.JOB_TTL_S,
            description=f"download job {job_id}",
            meta=telemetry.carrier(),  # the request's trace continues in the worker
        )
        res.queue.enqueue_job(rq_job, pipeline=pipe)

    idempotency = (header.idempotency_key, _fingerprint(body)) if header.idempotency_key else None
    try:
        job, created = res.store.create(owner, body.file_ids, files.draw_delay_s(settings), enqueue, idempotency)
    except IdempotencyConflict as conflict:
        raise Problem(
            422,
            "Idempotency-Key reused",
            "This Idempotency-Key was used with a different request body.",
            slug="idempotency-key-reused",
        ) from conflict
    doc = job.to_api()
    location = f"/v1/download/status/{job.id}"
    headers = {"Location": location, **_poll_headers(job)}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return (
        {
            "jobId": job.id,
            "status": job.status.value,
            "totalFileIds": job.total_files,
            "statusUrl": location,
            "createdAt": doc["createdAt"],
        },
        202,
        headers,
    )


@bp.get(
    "/download/status/<job_id>",
    summary="Poll a job (honour Retry-After)",
    responses={200: JobStatusResponse, 410: JobStatusResponse, **problems(*API_ROUTE, 404)},
)
def status(path: JobPath):
    job = _owned_job(path.job_id)
    code = 410 if job.status is JobStatus.CANCELLED else 200
    return _document(job), code, _poll_headers(job)


# uuid: else GET /v1/download/check (or /start, /initiate) would be this route, and those paths would
# answer GET with 400 instead of 405.
@bp.get(
    "/download/<uuid:job_id>",
    summary="Redirect to the artifact (presigned, short-lived S3 URL)",
    responses={302: None, **problems(*API_ROUTE, 404, 409, 410)},
)
def download(path: JobPath):
    job = _owned_job(path.job_id)
    if job.status is JobStatus.COMPLETED:
        url = _document(job)["downloadUrl"]
        return "", 302, {"Location": url, "Cache-Control": "no-store"}
    if job.status is JobStatus.CANCELLED:
        raise Problem(410, "Job cancelled", "This job was cancelled; it has no artifact.", slug="job-cancelled")
    if job.status is JobStatus.FAILED:
        raise Problem(409, "Job failed", job.error, slug="job-failed")
    raise Problem(
        409,
        "Job not finished",
        f"The job is {job.status.value}; poll its status.",
        slug="job-not-finished",
        headers=_poll_headers(job),
    )


@bp.get(
    "/download/events/<job_id>",
    summary="Server-sent events: the status document on every change, heartbeats in between",
    responses={200: EVENT_STREAM, **problems(*API_ROUTE, 404)},
)
def events(path: JobPath):
    """An alternative to polling for clients that can hold a connection (browsers: EventSource).

    Listens on the job's pub/sub channel, so events go out as the worker records them. Between
    events a comment goes out every SSE_HEARTBEAT_S, so no proxy on the way sees a silent stream.
    The stream ends at a terminal status, or after SSE_MAX_STREAM_S (the client reconnects:
    EventSource does so by itself, after the `retry` delay given here).
    """
    job = _owned_job(path.job_id)
    res = _res()
    settings = res.settings

    def stream():
        pubsub = res.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(events_channel(job.id))
        try:
            yield f"retry: {max(1, round(settings.poll_interval_s * 1000))}\n\n"
            # Read after subscribing, so a change between the two cannot be missed.
            current = res.store.get(job.id) or job
            yield _sse_event(current)
            last_sent = current.updated_at, current.status
            started = time.monotonic()
            next_beat = started + settings.sse_heartbeat_s
            while not current.status.is_terminal and time.monotonic() - started < settings.sse_max_stream_s:
                message = pubsub.get_message(timeout=max(0.0, next_beat - time.monotonic()))
                if message is None and time.monotonic() < next_beat:
                    continue  # woken early (e.g. by the subscribe confirmation)
                if message is None:
                    yield ": heartbeat\n\n"
                    next_beat += settings.sse_heartbeat_s
                current = res.store.fail_if_stale(res.store.get(job.id) or current, settings.stale_after_s)
                if (current.updated_at, current.status) != last_sent:
                    yield _sse_event(current)
                    last_sent = current.updated_at, current.status
        finally:
            pubsub.close()

    return Response(
        stream_with_context(stream()),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _sse_event(job: Job) -> str:
    return f"id: {job.updated_at!r}\nevent: status\ndata: {json.dumps(_document(job))}\n\n"


@bp.post(
    "/download/cancel/<job_id>",
    summary="Cancel a queued or running job",
    responses={200: JobStatusResponse, **problems(*WITH_BODY, 404, 409)},
)
def cancel(path: JobPath):
    job = _owned_job(path.job_id)
    res = _res()
    result = res.store.cancel(job.id)
    if result.applied and result.previous is JobStatus.QUEUED:
        # The worker would skip it anyway (start() refuses a cancelled job); this saves the dequeue.
        res.queue.remove(job.id)
    current = res.store.get(job.id) or job
    if current.status is not JobStatus.CANCELLED:
        raise Problem(
            409,
            "Job already finished",
            f"The job is {current.status.value}; it can no longer be cancelled.",
            slug="job-finished",
        )
    return _document(current), 200, {"Cache-Control": "no-store"}


@bp.get("/downloads", summary="The caller's jobs, newest first", responses={200: JobList, **problems(*API_ROUTE)})
def list_jobs(query: ListQuery):
    res = _res()
    owner = current_owner()
    jobs = res.store.list_for_owner(owner, query.limit, query.offset)
    now = time.time()
    docs = []
    for job in jobs:
        job = res.store.fail_if_stale(job, res.settings.stale_after_s)
        docs.append(_document(job) if job.status is JobStatus.COMPLETED else job.to_api(now))
    return {"jobs": docs, "limit": query.limit, "offset": query.offset}
