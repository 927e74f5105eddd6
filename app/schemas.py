"""Request and response models: they validate requests and generate /openapi.json (one source)."""

from __future__ import annotations

import copy
from http import HTTPStatus
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from dlkit.settings import FILE_ID_MAX, FILE_ID_MIN, MAX_FILES_PER_JOB


def _integral(value):
    """JSON has one number type: 70000.0 is the integer 70000, as JSON Schema's `integer` (what the
    OpenAPI document says) counts it. Only an integral float is converted; 70000.5 still fails."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# strict: "12345" and true are not file ids (70000.0 is, see _integral).
FileId = Annotated[int, Field(strict=True, ge=FILE_ID_MIN, le=FILE_ID_MAX), BeforeValidator(_integral)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileRequest(_Body):
    file_id: FileId


class InitiateRequest(_Body):
    file_ids: Annotated[
        list[FileId], Field(min_length=1, max_length=MAX_FILES_PER_JOB, json_schema_extra={"uniqueItems": True})
    ]

    @field_validator("file_ids")
    @classmethod
    def _unique(cls, ids: list[int]) -> list[int]:
        # Each id names one entry of the zip; a duplicate is a client bug, not more work.
        if len(set(ids)) != len(ids):
            raise ValueError("file_ids must not repeat")
        return ids


# What initiate's own 422 and 429 mean (besides the per-client rate limit).
INITIATE_NOTES = {
    422: (
        "`urn:dlkit:problem:job-too-large`: the archive these ids make is past MAX_JOB_BYTES (the problem"
        " carries `size` and `limit`, in bytes); `urn:dlkit:problem:idempotency-key-reused`: the key came"
        " with another body."
    ),
    429: (
        "`urn:dlkit:problem:too-many-active-jobs`: the caller has MAX_ACTIVE_JOBS_PER_OWNER jobs queued or"
        " processing (the problem carries `active` and `limit`; retry after Retry-After);"
        " `urn:dlkit:problem:rate-limited`: the per-client request limit."
    ),
}


# initiate's 200: with `Prefer: wait=N`, a job that ended within the wait.
INITIATE_FINISHED = {
    "description": "With `Prefer: wait=N`, the job ended within the wait: its final status document, as the "
    "status route answers it (`downloadUrl` once completed), but 200 for every final status, `cancelled` "
    "included (the job was created; the document says how it ended).",
    "headers": {
        "Content-Location": {"description": "The status URL: this document is its state", "schema": {"type": "string"}},
        "Preference-Applied": {"description": "`wait=<seconds waited at most>`", "schema": {"type": "string"}},
    },
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobStatusResponse"}}},
}


class RequestParameters(BaseModel):
    """Base of the header and query models: flask-openapi3 builds their JSON schema on every request
    to read them (a sixth of initiate's CPU time); here it is built once per class and set of
    arguments, and a copy handed out so that no caller changes the kept one."""

    @classmethod
    def model_json_schema(cls, *args, **kwargs) -> dict:
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in _JSON_SCHEMAS:
            _JSON_SCHEMAS[key] = super().model_json_schema(*args, **kwargs)
        return copy.deepcopy(_JSON_SCHEMAS[key])


_JSON_SCHEMAS: dict[tuple, dict] = {}


class InitiateHeaders(RequestParameters):
    idempotency_key: str | None = Field(
        None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Same key and body from the same caller returns the same job; another body is 422.",
    )
    prefer: str | None = Field(
        None,
        alias="Prefer",
        description="RFC 7240. `respond-async, wait=N`: wait up to N seconds for the job to end and answer "
        "200 with its final status document; past the wait, 202 as without it. The wait is capped at "
        "PREFER_WAIT_MAX_S (4 s), below every proxy timeout on this route; a busy API process (more than "
        "PREFER_MAX_WAITERS waiting) answers 202 at once. Unknown or malformed preferences are ignored. "
        "For jobs that end in a few seconds (a few ids); not a substitute for polling.",
    )


class JobPath(BaseModel):
    job_id: UUID


class ListQuery(RequestParameters):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(20, ge=1, le=100)
    offset: int = Field(0, ge=0, le=10_000)


JobStatusName = Literal["queued", "processing", "completed", "failed", "cancelled"]


class ArtifactInfo(BaseModel):
    size: int
    sha256: str


class JobStatusResponse(BaseModel):
    jobId: UUID
    status: JobStatusName
    attempt: int = Field(
        ge=1, description="Run of the job, from 1: a job whose worker was lost is re-queued with the next"
    )
    progress: float = Field(description="Percent of files processed")
    totalFiles: int
    processedFiles: int
    unavailableFileIds: list[int]
    downloadUrl: str | None = Field(description="Presigned, short-lived S3 URL once completed")
    error: str | None
    createdAt: str
    updatedAt: str
    estimatedSecondsRemaining: float | None
    artifact: ArtifactInfo | None
    note: str | None = Field(
        description="Why an active job does not move, when known: no live worker, or its worker was lost"
    )


class InitiateResponse(BaseModel):
    jobId: UUID
    status: JobStatusName
    totalFileIds: int
    statusUrl: str
    createdAt: str


class JobList(BaseModel):
    jobs: list[JobStatusResponse]
    limit: int
    offset: int


class CheckResponse(BaseModel):
    file_id: int
    available: bool
    s3Key: str | None
    size: int | None


class StartResponse(BaseModel):
    file_id: int
    status: Literal["completed"]
    size: int
    processingTimeMs: int


class FieldError(BaseModel):
    loc: str = Field(description="Where: `file_ids.1`, `limit`, `body`")
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error, whichever layer answers (the API, nginx,
    or the emulated load balancer and edge in front, which also set `layer`)."""

    model_config = ConfigDict(extra="allow")  # RFC 9457 extension members

    type: str
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    instance: str | None = None
    requestId: str | None = None
    traceId: str | None = Field(
        None, description="The request's trace id (32 hex digits) when it was traced and sampled (docs/tracing.md)"
    )
    layer: str | None = Field(None, description="The proxy that answered (nginx, lb, edge); absent from the API")
    errors: list[FieldError] | None = Field(None, description="What did not validate (400)")


PROBLEM_MEDIA_TYPE = "application/problem+json"

# Statuses that any request can meet on its way through the proxies and gunicorn, whatever the route:
# a request nginx refuses to read (400, 413 body, 414 URI, 431 headers), the API failing (500),
# unreachable (502) or too slow (504).
ANY_ROUTE = (400, 413, 414, 431, 500, 502, 504)
# Statuses that the job and legacy routes add: no or unknown API key, the per-client rate limit, and
# Redis or S3 unreachable.
API_ROUTE = (*ANY_ROUTE, 401, 429, 503)
# A request body that is not JSON.
WITH_BODY = (*API_ROUTE, 415)

_EXTRA_STATUS_PHRASES = {524: "A Timeout Occurred (the CDN edge gave up waiting)"}


def problems(*statuses: int, notes: dict[int, str] | None = None) -> dict[int, dict]:
    """OpenAPI responses for error statuses, each an `application/problem+json` Problem; `notes` add
    what a status means on this route to its description."""
    notes = notes or {}
    return {
        status: {
            "description": ": ".join(
                filter(None, (_EXTRA_STATUS_PHRASES.get(status) or HTTPStatus(status).phrase, notes.get(status)))
            ),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in sorted(set(statuses))
    }


class ServiceIndex(BaseModel):
    service: str
    links: dict[str, str]


class HealthChecks(BaseModel):
    storage: Literal["ok", "error"]
    redis: Literal["ok", "error"]
    workers: Literal["ok", "none", "error"] = Field(
        description="`none`: no worker registered in Redis (queued jobs wait); `error`: Redis unreachable"
    )


class Health(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"] = Field(
        description="`degraded` (200): Redis and S3 answer but no worker is live; `unhealthy` (503): one does not"
    )
    checks: HealthChecks
