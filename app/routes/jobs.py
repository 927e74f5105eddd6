"""The async job API: initiate -> status (poll) -> download (302 to S3), cancel, list.

Every call returns in milliseconds: the work happens in RQ workers (worker/tasks.py), and the
job record (dlkit/jobs.py) is the only state the API and the workers share.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Iterable

from flask import Response, current_app, g, request, stream_with_context
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field
from werkzeug.http import parse_list_header, unquote_header_value

from dlkit import files, telemetry
from dlkit.jobs import IdempotencyConflict, Job, JobStatus, TooManyActiveJobs, events_channel

from ..auth import authenticate, current_owner
from ..extensions import rate_limit_key
from ..hooks import retry_after
from ..problems import Problem, problem_response
from ..schemas import (
    API_ROUTE,
    INITIATE_FINISHED,
    INITIATE_NOTES,
    WITH_BODY,
    InitiateHeaders,
    InitiateRequest,
    InitiateResponse,
    JobList,
    JobPath,
    JobStatusResponse,
    ListQuery,
    RequestParameters,
    problems,
)

bp = APIBlueprint(
    "jobs", __name__, url_prefix="/v1", abp_tags=[Tag(name="jobs (asynchronous)")], abp_security=[{"apiKey": []}]
)
bp.before_request(authenticate)

# One server-sent event: `status`, whose data is the status document, and whose id is the change's
# entry in the job's event log (dlkit/jobs.py).
EVENT_STREAM = {
    "description": "A `status` event on every change of the job, heartbeat comments in between; the stream "
    "ends after the terminal status. Each event's `id` names that change: reconnecting with it in "
    "`Last-Event-ID` (EventSource does so by itself) resumes with the changes after it, none missed "
    "and none repeated; without the header (or with one this job never sent) the stream starts with "
    "the current status. 204 when `Last-Event-ID` is the job's final event: nothing more will come.",
    "content": {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "required": ["event", "id", "data"],
                "properties": {
                    "event": {"const": "status"},
                    "id": {
                        "type": "string",
                        "pattern": "^[0-9]+-[0-9]+$",
                        "description": "the change's id, increasing; `0-0` for a job that has not changed "
                        "since it was queued. Send it back as `Last-Event-ID` to resume after it.",
                    },
                    "retry": {"type": "integer"},
                    "data": {"type": "string", "description": "JSON: the status document (JobStatusResponse)"},
                },
            }
        }
    },
}
# An event id as the event log (a Redis stream) writes it.
EVENT_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


class EventsHeaders(RequestParameters):
    last_event_id: str | None = Field(
        None,
        alias="Last-Event-ID",
        description="The id of the last event received: the stream resumes after it (an id this job never "
        "sent is ignored, and the stream starts from the current status).",
    )


WORKER_FUNCTION = "worker.tasks.build_archive"
SELF_LIMITED = frozenset({"jobs.status", "jobs.initiate"})  # see _self_limited_routes


def _res():
    return current_app.extensions["dlkit"]


def _owned_job(job_id) -> Job:
    """The caller's job, or 404: someone else's job is indistinguishable from a missing one."""
    res = _res()
    job = res.store.get(str(job_id))
    if job is None or job.owner != current_owner():
        raise Problem(404, "Job not found", f"No job {job_id} (unknown, expired, or not yours).", slug="job-not-found")
    g.job = job  # after_request hooks read it too
    return job


def _live_workers() -> int:
    """Workers that stamped themselves live lately (dlkit/workers.py), read once per request."""
    if "live_workers" not in g:
        g.live_workers = _res().live_workers.count()
    return g.live_workers


def _note(job: Job) -> str | None:
    """Why an active job is not moving, when the API can tell: no live worker, or its worker was lost."""
    if job.status is JobStatus.PROCESSING and _res().store.is_stale(job, _res().settings.stale_after_s):
        if _live_workers():
            return "worker lost: a live worker re-queues the job"
        return "worker lost and no live worker: the job is re-queued once a worker is started"
    if job.status is JobStatus.QUEUED and not _live_workers():
        return "no live worker: the job waits until a worker is started"
    return None


def _rate_limited(count: int, now: float) -> dict[str, str]:
    """The RateLimit-* headers after the caller's `count`-th request in this window; 429 past the limit."""
    res = _res()
    headers = res.route_limit.headers(count, now)
    if count > res.route_limit.amount:
        raise Problem(
            429,
            "Too Many Requests",
            f"Rate limit of {res.settings.rate_limit} exceeded; retry after Retry-After seconds.",
            slug="rate-limited",
            headers=headers,
        )
    return headers


def _polled_job(job_id) -> tuple[Job, dict[str, str]]:
    """_owned_job for the status poll, with its rate limit: the job read and the caller's count are
    one Redis round trip. Returns the job and the RateLimit-* headers; 429 past the limit."""
    res = _res()
    limit, now = res.route_limit, time.time()
    job, count = res.store.get_counted(str(job_id), limit.key("status", rate_limit_key(), now), limit.window_s)
    headers = _rate_limited(count, now)
    if job is None or job.owner != current_owner():
        raise Problem(
            404,
            "Job not found",
            f"No job {job_id} (unknown, expired, or not yours).",
            slug="job-not-found",
            headers=headers,
        )
    g.job = job  # after_request hooks read it too
    return job, headers


def _queue_wait_s(job: Job) -> float:
    """A queued job's expected wait for a worker, from its place in RQ's queue and the number of workers
    (one more round trip, only while queued: with Retry-After from it, far back means polled rarely)."""
    res = _res()
    position, workers = res.store.queue_position(res.queue.key, res.live_workers, job.id)
    g.live_workers = workers  # the same count _live_workers reads: the note needs no round trip of its own
    if position is None:
        return 0.0
    settings = res.settings
    mean_job_s = (
        settings.scaled((settings.DOWNLOAD_DELAY_MIN_MS + settings.DOWNLOAD_DELAY_MAX_MS) / 2000)
        if settings.DOWNLOAD_DELAY_ENABLED
        else 0.0
    )
    return (position + 1) * mean_job_s / max(1, workers)


def _document(job: Job, queue_wait_s: float = 0.0) -> dict:
    doc = job.to_api(queue_wait_s=queue_wait_s)
    doc["note"] = _note(job)
    if job.status is JobStatus.COMPLETED:
        res = _res()
        doc["downloadUrl"] = res.download_urls.get(
            res.settings.S3_BUCKET_NAME,
            job.artifact_key,
            res.settings.download_url_ttl_s,
            f"dlkit-{job.id}.zip",
        )
    return doc


def _poll_headers(job: Job, eta_s: float | None = None) -> dict[str, str]:
    """Retry-After while not terminal: half the estimated time left (`eta_s`), at least the poll
    interval, so a client far back in the queue polls rarely and one near the end often. A job
    processing within two intervals of its end: just after the expected end (a quarter interval past
    it, for the upload and the final write), so the poll that finds the file lands when it is ready,
    not up to an interval late."""
    headers = {"Cache-Control": "no-store"}
    if not job.status.is_terminal:
        interval, eta = _res().settings.poll_interval_s, eta_s or 0.0
        if job.status is JobStatus.PROCESSING and eta_s is not None and eta <= 2 * interval:
            wait = max(eta, interval / 4) + interval / 4
        else:
            wait = max(interval, eta / 2)
        headers["Retry-After"] = retry_after(wait)
    return headers


def _fingerprint(body: BaseModel) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


@bp.post(
    "/download/initiate",
    summary="Start an asynchronous download job",
    responses={200: INITIATE_FINISHED, 202: InitiateResponse, **problems(*WITH_BODY, 422, notes=INITIATE_NOTES)},
)
def initiate(body: InitiateRequest, header: InitiateHeaders):
    owner = current_owner()
    res = _res()
    settings = res.settings
    # The zip's size follows from the ids: refuse a job past the budget before anything is written.
    size = files.archive_size(body.file_ids)
    if size > settings.MAX_JOB_BYTES:
        raise Problem(
            422,
            "Job too large",
            f"These files make a {size}-byte archive; the limit per job is {settings.MAX_JOB_BYTES} bytes."
            " Split them into smaller jobs.",
            slug="job-too-large",
            size=size,
            limit=settings.MAX_JOB_BYTES,
        )
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
    limit, now = res.route_limit, time.time()
    g.initiate_uncounted = False  # counted by the create's one round trip, whatever it answers
    try:
        job, created, count = res.store.create_counted(
            owner,
            body.file_ids,
            files.draw_delay_s(settings),
            enqueue,
            idempotency,
            max_active=settings.MAX_ACTIVE_JOBS_PER_OWNER,
            counter=(limit.key("initiate", rate_limit_key(), now), limit.window_s, limit.amount),
        )
    except IdempotencyConflict as conflict:
        raise Problem(
            422,
            "Idempotency-Key reused",
            "This Idempotency-Key was used with a different request body.",
            slug="idempotency-key-reused",
        ) from conflict
    except TooManyActiveJobs as busy:
        raise Problem(
            429,
            "Too many active jobs",
            f"You have {busy.active} jobs queued or processing; the limit is {busy.limit}."
            " Retry when one of them has finished.",
            slug="too-many-active-jobs",
            headers={"Retry-After": retry_after(settings.poll_interval_s)},
            active=busy.active,
            limit=busy.limit,
        ) from busy
    limit_headers = _rate_limited(count, now)  # 429 past the limit: then nothing was created
    doc = job.to_api()
    location = f"/v1/download/status/{job.id}"
    headers = {"Location": location, **limit_headers, **_poll_headers(job)}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    finished = _preferred(job, location, headers)  # Prefer: wait=N
    if finished is not None:
        return finished
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


# RFC 7240 `wait`: delta-seconds (RFC 9111: 1*DIGIT; a value past 2^31 means 2^31).
DELTA_SECONDS = re.compile(r"^[0-9]+$")
WAITERS = "dlkit.prefer_waiters"


def parse_prefer(values: Iterable[str]) -> dict[str, str]:
    """RFC 7240 preferences of the Prefer header lines: lowercased name -> value ('' when none).

    Only the first instance of a name counts; parameters (after `;`) are dropped, as no preference
    used here has any; a quoted value is unquoted. Never raises: a preference cannot fail a request.
    """
    preferences: dict[str, str] = {}
    for item in parse_list_header(", ".join(values)):
        name, _, value = item.partition(";")[0].partition("=")
        name = name.strip().lower()
        if name and name not in preferences:
            preferences[name] = unquote_header_value(value.strip())
    return preferences


def wait_preference(preferences: dict[str, str]) -> int | None:
    """`wait` in seconds; None when absent or malformed (then ignored, as RFC 7240 asks)."""
    value = preferences.get("wait", "")
    if not DELTA_SECONDS.match(value):
        return None
    return int(value) if len(value) <= 10 else 2**31


def _preferred(job: Job, location: str, headers: dict[str, str]) -> tuple[dict, int, dict] | None:
    """`Prefer: wait=N` on initiate: the final status document (200) when the job ends within N seconds,
    at most prefer_wait_max_s; None to answer 202 as without it. Adds Vary and Preference-Applied to
    the 202's `headers`.

    A waiting request holds a gunicorn thread: at most PREFER_MAX_WAITERS per process wait, past them
    the preference is ignored; a server that runs one request per process (gunicorn's sync workers: WSGI's
    `wsgi.multithread` false) never waits, or the wait would hold the whole process. The wait blocks on
    the job's event log (JobStore.wait_terminal).
    """
    headers["Vary"] = "Prefer"
    preferences = parse_prefer(request.headers.getlist("Prefer"))
    wanted = wait_preference(preferences)
    applied = ["respond-async"] if "respond-async" in preferences else []
    if wanted is not None:
        res = _res()
        wait_s = min(wanted, res.settings.prefer_wait_max_s)
        final, waited = job, False
        # A replay of a finished job needs no wait.
        if not job.status.is_terminal and wait_s > 0 and request.environ.get("wsgi.multithread"):
            waiters = current_app.extensions[WAITERS]
            if waiters.acquire(blocking=False):
                try:
                    final = res.store.wait_terminal(job.id, wait_s, res.settings.REDIS_SOCKET_TIMEOUT_S / 2) or job
                    waited = True
                finally:
                    waiters.release()
        if final.status.is_terminal:
            # As the status route answers, but 200 for a cancelled job too: this request (create a job)
            # succeeded, and the document says how the job ended; 410 would say initiate is gone.
            headers.pop("Retry-After", None)
            headers.update({"Content-Location": location, "Preference-Applied": f"wait={wait_s:g}"})
            return _document(final), 200, headers
        if waited:
            applied.append(f"wait={wait_s:g}")
    if applied:
        headers["Preference-Applied"] = ", ".join(applied)
    return None


@bp.record_once
def _prefer_waiters(state) -> None:
    state.app.extensions[WAITERS] = threading.BoundedSemaphore(
        state.app.extensions["dlkit"].settings.PREFER_MAX_WAITERS
    )


@bp.get(
    "/download/status/<job_id>",
    summary="Poll a job (honour Retry-After)",
    responses={200: JobStatusResponse, 410: JobStatusResponse, **problems(*API_ROUTE, 404)},
)
def status(path: JobPath):
    job, limit_headers = _polled_job(path.job_id)
    code = 410 if job.status is JobStatus.CANCELLED else 200
    doc = _document(job, _queue_wait_s(job) if job.status is JobStatus.QUEUED else 0.0)
    return doc, code, {**limit_headers, **_poll_headers(job, doc["estimatedSecondsRemaining"])}


@bp.record_once
def _self_limited_routes(state) -> None:
    # The status poll and initiate count their own rate limit (_rate_limited), the poll in the round trip
    # that reads the job. A request filter, not limiter.exempt(): it skips Flask-Limiter's per-request
    # exemption lookup too. Only for known callers: a request with a bad key is still counted by
    # Flask-Limiter, by address, so keys cannot be guessed at an unlimited rate.
    state.app.extensions["dlkit"].limiter.request_filter(lambda: request.endpoint in SELF_LIMITED and _known_caller())


def _known_caller() -> bool:
    try:
        current_owner()  # cached on g: authenticate() does not check twice
    except Problem:
        return False
    return True


@bp.before_request
def _count_initiate() -> None:
    """initiate's own rate limit counts every request of a known caller, a malformed one too: a valid
    one is counted by the create's round trip (initiate), any other by _count_refused_initiate."""
    if request.endpoint == "jobs.initiate" and request.method == "POST":
        g.initiate_uncounted = True


@bp.after_request
def _count_refused_initiate(response: Response) -> Response:
    """An initiate refused before its create (invalid body, job too large) is counted here, and answered
    429 past the limit, as if it had been counted first."""
    if not g.pop("initiate_uncounted", False):
        return response
    res, now = _res(), time.time()
    count = res.store.count(res.route_limit.key("initiate", rate_limit_key(), now), res.route_limit.window_s)
    try:
        response.headers.update(_rate_limited(count, now))
    except Problem as refused:
        return problem_response(
            refused.status, refused.title, refused.detail, slug=refused.slug, headers=refused.headers, **refused.extra
        )
    return response


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
    responses={200: EVENT_STREAM, 204: None, **problems(*API_ROUTE, 404)},
)
def events(path: JobPath, header: EventsHeaders):
    """An alternative to polling for clients that can hold a connection (browsers: EventSource).

    Every announced change of the job is an entry in its event log, and wakes this stream through the
    job's pub/sub channel; each entry goes out once, as the record was at that change, with the
    entry's id. Between events a comment goes out every SSE_HEARTBEAT_S, so no proxy on the way sees
    a silent stream. The stream ends after the terminal status, or after SSE_MAX_STREAM_S (the client
    reconnects with Last-Event-ID: EventSource does so by itself, after the `retry` delay given here).
    """
    job = _owned_job(path.job_id)
    res = _res()
    settings = res.settings
    last_id = (header.last_event_id or "").strip()
    if not EVENT_ID.match(last_id):
        last_id = None  # absent, or not an id of ours (a client's own): start from the current status
    elif job.status.is_terminal and not res.store.changes_after(job, last_id):
        return "", 204, {"Cache-Control": "no-store"}  # it has had the final event: stop reconnecting

    def stream():
        pubsub = res.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(events_channel(job.id))
        try:
            yield f"retry: {max(1, round(settings.poll_interval_s * 1000))}\n\n"
            # Read after subscribing, so a change between the two cannot be missed.
            sent = last_id
            if sent is None:
                sent, current = res.store.latest(job.id) or ("0-0", job)
                yield _sse_event(current, sent)
                if current.status.is_terminal:
                    return
            started = time.monotonic()
            next_beat = started + settings.sse_heartbeat_s
            while time.monotonic() - started < settings.sse_max_stream_s:
                for change_id, change in res.store.changes_after(job, sent):
                    yield _sse_event(change, change_id)
                    sent = change_id
                    if change.status.is_terminal:
                        return
                # Wait for the next change (a message) or the next heartbeat, whichever comes first.
                while pubsub.get_message(timeout=max(0.0, next_beat - time.monotonic())) is None:
                    if time.monotonic() >= next_beat:
                        yield ": heartbeat\n\n"
                        next_beat += settings.sse_heartbeat_s
                        break  # and read the log again: a change whose message was lost still shows
        finally:
            pubsub.close()

    return Response(
        stream_with_context(stream()),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _sse_event(job: Job, event_id: str) -> str:
    return f"id: {event_id}\nevent: status\ndata: {json.dumps(_document(job))}\n\n"


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
        doc = _document(job) if job.status is JobStatus.COMPLETED else job.to_api(now)
        doc["note"] = _note(job)
        docs.append(doc)
    return {"jobs": docs, "limit": query.limit, "offset": query.offset}
