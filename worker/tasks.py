"""The job function the API enqueues: `build_archive(job_id)`.

For each requested file it waits that file's share of the job's simulated delay, adds the
file's bytes to a zip streamed into S3, and records progress. The wait blocks on the job's
cancel list in Redis instead of sleeping, so a cancel stops the work at once and the partial
upload is aborted. Failures end up on the job record as text, never as a job left running.
"""

from __future__ import annotations

import logging
import time
import zipfile
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError
from redis import Redis
from rq import get_current_job

from dlkit import files, telemetry
from dlkit.jobs import JobStatus, JobStore, cancel_key
from dlkit.settings import Settings
from dlkit.storage import MultipartUpload, artifact_key, s3_client

from . import metrics

log = logging.getLogger(__name__)

# Fixed timestamp: the same files give the same zip, byte for byte.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# What every job needs, built once by `python -m worker` before RQ forks the work horses (prepare).
_prepared: tuple[Settings, object] | None = None


def prepare(settings: Settings) -> None:
    """Build the settings and the S3 client that every job of this worker uses.

    Called by `python -m worker` before it forks work horses, so a horse starts with both instead
    of paying for them (parsing the environment, loading botocore's S3 models: about 1 s of a
    horse's time on a small machine). Safe across the fork: the worker process runs no job, so
    this client never opens a connection there, and each horse opens its own.
    """
    global _prepared
    _prepared = (settings, s3_client(settings))


class Stopped(Exception):
    """The job left `processing` under the worker (cancelled, or re-queued by a sweeper: worker lost)."""


@telemetry.traced_job
def build_archive(job_id: str) -> dict:
    settings, s3 = _prepared or (Settings.from_env(), None)
    redis: Redis = get_current_job().connection
    store = JobStore(redis, settings.JOB_TTL_S)

    started = store.start(job_id)
    if not started.applied:
        # Cancelled while queued (or expired): a queued job that was cancelled never starts.
        log.info("job %s not started: status %s", job_id, started.previous)
        metrics.job_skipped()
        return {"jobId": job_id, "skipped": started.previous.value if started.previous else "missing"}

    job = store.get(job_id)
    attempt = job.attempt  # every write below is refused once the job was re-queued under this run
    metrics.job_started(job)
    telemetry.job_started(job)
    s3 = s3 or s3_client(settings)
    key = artifact_key(job_id)
    upload = MultipartUpload(
        s3, settings.S3_BUCKET_NAME, key, settings.S3_PART_SIZE_BYTES, concurrency=settings.S3_UPLOAD_CONCURRENCY
    )
    try:
        run = Run(store, job_id, attempt, settings.heartbeat_s)
        unavailable = _write_zip(run, job.file_ids, job.delay_s / job.total_files, upload)
        if len(unavailable) == job.total_files:
            upload.abort()
            failed = store.fail(
                job_id,
                f"none of the {job.total_files} requested files is available",
                allowed=(JobStatus.PROCESSING,),
                attempt=attempt,
            )
            metrics.job_failed(job, failed, metrics.NO_FILES_AVAILABLE)
            return {"jobId": job_id, "status": "failed"}
        with telemetry.span("download.upload"):
            upload.complete()
    except Stopped:
        _abort_quietly(upload)
        metrics.job_stopped()
        return {"jobId": job_id, "status": (store.get(job_id) or job).status.value}
    except (BotoCoreError, ClientError) as exc:
        # boto3 has already retried with backoff (S3_MAX_ATTEMPTS); the store is really down.
        _abort_quietly(upload)
        failed = store.fail(job_id, f"storage unavailable: {exc}", allowed=(JobStatus.PROCESSING,), attempt=attempt)
        metrics.job_failed(job, failed, metrics.STORAGE_UNAVAILABLE)
        return {"jobId": job_id, "status": "failed"}
    except Exception as exc:
        _abort_quietly(upload)
        failed = store.fail(
            job_id, f"internal error: {type(exc).__name__}", allowed=(JobStatus.PROCESSING,), attempt=attempt
        )
        metrics.job_failed(job, failed, metrics.INTERNAL_ERROR)
        raise

    done = store.complete(job_id, key, upload.size, upload.sha256.hexdigest(), attempt=attempt)
    metrics.job_completed(job, done, upload.size)
    if not done.applied:
        # Cancelled (or re-queued by a sweeper) while the last part was stored: remove it,
        # so a cancelled job never leaves an artifact behind (unless a later attempt completed it:
        # the same key, the same bytes).
        if done.previous is not JobStatus.COMPLETED:
            s3.delete_object(Bucket=settings.S3_BUCKET_NAME, Key=key)
        return {"jobId": job_id, "status": done.previous.value if done.previous else "missing"}
    return {"jobId": job_id, "status": "completed", "size": upload.size}


@dataclass(frozen=True)
class Run:
    """This work horse's run of one job. Its writes carry the attempt: once a sweeper has re-queued the
    job under it (worker lost), they are refused, and the run stops."""

    store: JobStore
    job_id: str
    attempt: int
    heartbeat_s: float

    def wait_or_stop(self, seconds: float) -> None:
        """Spend `seconds` of simulated work, heartbeating, and return early with Stopped on cancel."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            # BLPOP is the interruptible wait: the API pushes to this list on cancel. Never pass a
            # timeout that Redis would round down to 0 ms: 0 means "block forever".
            timeout = max(0.01, min(remaining, self.heartbeat_s))
            if self.store.redis.blpop([cancel_key(self.job_id)], timeout=timeout) is not None:
                raise Stopped()
            if not self.store.heartbeat(self.job_id, self.attempt).applied:
                raise Stopped()

    def record_progress(self, done: int, unavailable: list[int]) -> None:
        if not self.store.record_progress(self.job_id, done, unavailable, self.attempt).applied:
            raise Stopped()


def _write_zip(run: Run, file_ids: list[int], step_s: float, upload: MultipartUpload) -> list[int]:
    """Each file after its share of the work, into a zip streamed to `upload`; the unavailable ids."""
    unavailable: list[int] = []
    with zipfile.ZipFile(upload, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for done, file_id in enumerate(file_ids, start=1):
            with telemetry.span("download.file", fileId=file_id, fileIndex=done):
                run.wait_or_stop(step_s)
                if files.is_available(file_id):
                    info = zipfile.ZipInfo(files.file_name(file_id), date_time=ZIP_DATE)
                    archive.writestr(info, files.file_bytes(file_id))
                    metrics.file_processed(available=True)
                else:
                    unavailable.append(file_id)
                    metrics.file_processed(available=False)
                run.record_progress(done, unavailable)
    return unavailable


def _abort_quietly(upload: MultipartUpload) -> None:
    try:
        upload.abort()
    except (BotoCoreError, ClientError):
        # The store is down: the bucket's lifecycle rule for incomplete uploads cleans up.
        log.warning("could not abort multipart upload %s", upload.upload_id)
