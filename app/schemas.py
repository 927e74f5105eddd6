"""Request and response models: they validate requests and generate /openapi.json (one source)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dlkit.settings import FILE_ID_MAX, FILE_ID_MIN, MAX_FILES_PER_JOB

# strict: "12345", 12345.0 and true are not file ids.
FileId = Annotated[int, Field(strict=True, ge=FILE_ID_MIN, le=FILE_ID_MAX)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileRequest(_Body):
    file_id: FileId


class InitiateRequest(_Body):
    file_ids: Annotated[list[FileId], Field(min_length=1, max_length=MAX_FILES_PER_JOB)]

    @field_validator("file_ids")
    @classmethod
    def _unique(cls, ids: list[int]) -> list[int]:
        # Each id names one entry of the zip; a duplicate is a client bug, not more work.
        if len(set(ids)) != len(ids):
            raise ValueError("file_ids must not repeat")
        return ids


class InitiateHeaders(BaseModel):
    idempotency_key: str | None = Field(
        None, alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
        description="Same key and body from the same caller returns the same job; another body is 422.",
    )


class JobPath(BaseModel):
    job_id: UUID


class ListQuery(BaseModel):
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


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    requestId: str | None = None


class Health(BaseModel):
    status: Literal["healthy", "unhealthy"]
    checks: dict[str, Literal["ok", "error"]]
