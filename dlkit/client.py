"""A Python client of the async download API: start a job, follow it, download its verified zip.

    from dlkit.client import DownloadClient

    with DownloadClient("https://downloads.example.com", api_key="...") as client:
        job = client.start([70000, 70007])
        final = client.wait(job, on_progress=lambda s: print(s.processed_files, "/", s.total_files))
        client.download(final, "files.zip")  # verified against the job's sha256

Depends on httpx and the standard library only (it imports nothing else from dlkit), so it can be
copied or installed without the servers. What it does for you:

- `start` sends an Idempotency-Key (a new UUID unless you give one) and retries on network errors,
  5xx and 429: a retry of a request whose answer was lost returns the same job, not a second one.
- every call waits `Retry-After` when the server gives one, else backs off exponentially (with
  jitter) on 5xx and network errors, up to `max_retries`.
- `iter_progress` follows the job's server-sent events, reconnecting with `Last-Event-ID` so no
  change is missed or repeated, and falls back to polling (honouring Retry-After) when events are
  not available; `wait` is `iter_progress` to the end.
- a job is resumed by its id: `client.status(job_id)`, then `wait` / `download` as usual.
- `download` follows the redirect to the presigned URL (without your API key), streams the zip to a
  temporary file next to `path`, checks its size and sha256 against the status document's
  `artifact`, and only then renames it to `path`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

TERMINAL = frozenset({"completed", "failed", "cancelled"})
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
CHUNK_BYTES = 1 << 16


class ApiError(Exception):
    """The API refused a request (a 4xx, or a 5xx past every retry); `problem` is its RFC 9457 body."""

    def __init__(self, status_code: int, problem: dict[str, Any]):
        self.status_code = status_code
        self.problem = problem
        super().__init__(f"{status_code} {problem.get('title', '')}: {problem.get('detail', '')}".strip())


class JobNotCompleted(Exception):
    """`download` was asked for a job that failed, was cancelled or has not finished."""

    def __init__(self, status: Status):
        self.status = status
        super().__init__(f"job {status.job_id} is {status.status}" + (f": {status.error}" if status.error else ""))


class ChecksumMismatch(Exception):
    """The downloaded bytes are not the artifact the job recorded (size or sha256 differ)."""


@dataclass(frozen=True)
class Status:
    """One status document of a job (`document` holds it whole, as the API sent it)."""

    job_id: str
    status: str
    progress: float
    total_files: int
    processed_files: int
    estimated_seconds_remaining: float | None
    error: str | None
    artifact_size: int | None
    artifact_sha256: str | None
    document: dict[str, Any] = field(repr=False)

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Status:
        artifact = doc.get("artifact") or {}
        return cls(
            job_id=doc["jobId"],
            status=doc["status"],
            progress=float(doc.get("progress") or 0.0),
            total_files=int(doc.get("totalFiles") or doc.get("totalFileIds") or 0),
            processed_files=int(doc.get("processedFiles") or 0),
            estimated_seconds_remaining=doc.get("estimatedSecondsRemaining"),
            error=doc.get("error"),
            artifact_size=artifact.get("size"),
            artifact_sha256=artifact.get("sha256"),
            document=doc,
        )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


JobRef = Status | str  # a status (what start, wait and status return) or a bare job id


def _job_id(job: JobRef) -> str:
    return job.job_id if isinstance(job, Status) else str(job)


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the API sends decimals when its clock is scaled), or None."""
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: not sent by this API, backed off like a missing header


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {"title": response.reason_phrase, "detail": response.text[:200]}


class DownloadClient:
    """A client of one deployment. Thread-compatible, not thread-safe: use one per thread.

    `base_url` is the API's entry (e.g. ``http://127.0.0.1:18080``); `api_key` goes out as a Bearer
    token to the API only, never to the storage the artifact is fetched from. `max_retries` bounds
    the retries of one call; `backoff_s` is the first back-off, doubled each time up to
    `max_backoff_s`. `sse=False` polls instead of following server-sent events.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 8,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        sse: bool = True,
        sse_read_timeout_s: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._api = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s, transport=transport)
        self._storage = httpx.Client(timeout=timeout_s, transport=transport)  # no API key to S3
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.sse = sse
        self.sse_read_timeout_s = sse_read_timeout_s
        self._sleep = sleep

    def __enter__(self) -> DownloadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._api.close()
        self._storage.close()

    # -- the job ---------------------------------------------------------------------------

    def start(self, file_ids: list[int], idempotency_key: str | None = None, wait: int | None = None) -> Status:
        """Initiate a job for `file_ids`; retried safely under one Idempotency-Key (generated if not given).

        `wait`: let the API hold the call up to that many seconds (`Prefer: respond-async, wait=N`, which
        the API caps at a few seconds) for the job to end; the status returned is then terminal when it
        did, so a small job needs no polling. Otherwise follow it with wait() as usual.
        """
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        if wait is not None:
            headers["Prefer"] = f"respond-async, wait={wait}"
        response = self._call("POST", "/v1/download/initiate", json={"file_ids": list(file_ids)}, headers=headers)
        return Status.from_document(response.json())

    def status(self, job: JobRef) -> Status:
        """The job's current status (a cancelled job's too, which the API sends with 410)."""
        return Status.from_document(self._call("GET", f"/v1/download/status/{_job_id(job)}", ok=(200, 410)).json())

    def cancel(self, job: JobRef) -> Status:
        """Cancel a queued or running job; ApiError 409 if it had already finished."""
        return Status.from_document(self._call("POST", f"/v1/download/cancel/{_job_id(job)}").json())

    def iter_progress(self, job: JobRef) -> Iterator[Status]:
        """Each new status of the job, up to and including its terminal one.

        Server-sent events when the API offers them (reconnecting with Last-Event-ID after a lost
        connection), else polling at the pace the API's Retry-After sets.
        """
        job_id = _job_id(job)
        if self.sse:
            last = yield from self._follow_events(job_id)
            if last is not None and last.is_terminal:
                return
        yield from self._poll(job_id)

    def wait(self, job: JobRef, on_progress: Callable[[Status], None] | None = None) -> Status:
        """Follow the job to its end and return its terminal status; `on_progress` sees every status."""
        final = None
        for final in self.iter_progress(job):
            if on_progress is not None:
                on_progress(final)
        assert final is not None  # iter_progress always yields the terminal status
        return final

    def download(
        self, job: JobRef, path: str | os.PathLike[str], on_bytes: Callable[[int, int | None], None] | None = None
    ) -> Path:
        """Fetch a completed job's zip to `path`, verified (size and sha256) before it is renamed there.

        `on_bytes(received, total)` is called as bytes arrive. A lost connection restarts the
        transfer with a fresh presigned URL, up to `max_retries` times.
        """
        status = job if isinstance(job, Status) and job.status == "completed" else self.status(job)
        if status.status != "completed" or not status.artifact_sha256:
            raise JobNotCompleted(status)
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        for attempt in range(self.max_retries + 1):
            redirect = self._call("GET", f"/v1/download/{status.job_id}", ok=(302,))
            try:
                digest, size = self._fetch(redirect.headers["Location"], partial, status.artifact_size, on_bytes)
            except (httpx.TransportError, _RetryableStatus):
                if attempt == self.max_retries:
                    partial.unlink(missing_ok=True)
                    raise
                self._sleep(self._backoff(attempt))
                continue
            except BaseException:  # Ctrl-C, an HTTP error: no half-written file is left behind
                partial.unlink(missing_ok=True)
                raise
            if digest != status.artifact_sha256 or (status.artifact_size is not None and size != status.artifact_size):
                partial.unlink(missing_ok=True)
                raise ChecksumMismatch(
                    f"job {status.job_id}: got {size} bytes with sha256 {digest}, "
                    f"expected {status.artifact_size} bytes with sha256 {status.artifact_sha256}"
                )
            partial.replace(target)
            return target
        raise AssertionError("unreachable")

    # -- internals -------------------------------------------------------------------------

    def _fetch(
        self, url: str, partial: Path, total: int | None, on_bytes: Callable[[int, int | None], None] | None
    ) -> tuple[str, int]:
        sha256, received = hashlib.sha256(), 0
        with self._storage.stream("GET", url) as response:
            if response.status_code in RETRIED_STATUSES:
                raise _RetryableStatus()
            response.raise_for_status()
            with partial.open("wb") as out:
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    out.write(chunk)
                    sha256.update(chunk)
                    received += len(chunk)
                    if on_bytes is not None:
                        on_bytes(received, total)
        return sha256.hexdigest(), received

    def _backoff(self, attempt: int) -> float:
        """Exponential back-off with full jitter: a crowd of clients does not retry in step."""
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt))

    def _call(self, method: str, url: str, ok: tuple[int, ...] = (200, 202), **kw: Any) -> httpx.Response:
        """One API call, retried on network errors, 429 and 5xx (after Retry-After, else a back-off)."""
        for attempt in range(self.max_retries + 1):
            try:
                response = self._api.request(method, url, **kw)
            except httpx.TransportError:
                if attempt == self.max_retries:
                    raise
                self._sleep(self._backoff(attempt))
                continue
            if response.status_code in ok:
                return response
            if response.status_code not in RETRIED_STATUSES or attempt == self.max_retries:
                raise ApiError(response.status_code, _problem(response))
            wait = _retry_after(response)
            self._sleep(wait if wait is not None else self._backoff(attempt))
        raise AssertionError("unreachable")

    def _poll(self, job_id: str) -> Iterator[Status]:
        previous = None
        while True:
            response = self._call("GET", f"/v1/download/status/{job_id}", ok=(200, 410))
            status = Status.from_document(response.json())
            if status.document != previous:
                yield status
                previous = status.document
            if status.is_terminal:
                return
            wait = _retry_after(response)
            self._sleep(wait if wait is not None else self.backoff_s)

    def _follow_events(self, job_id: str) -> Iterator[Status]:
        """Yield the job's status events until the terminal one; return the last status yielded, or
        None when the API has no events to give (the caller polls instead)."""
        last_id: str | None = None
        last: Status | None = None
        failures = 0
        timeout = httpx.Timeout(self._api.timeout.connect, read=self.sse_read_timeout_s)
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                with self._api.stream(
                    "GET", f"/v1/download/events/{job_id}", headers=headers, timeout=timeout
                ) as response:
                    if response.status_code == 204:  # we had the final event already
                        return last
                    content_type = response.headers.get("Content-Type", "")
                    if response.status_code != 200 or not content_type.startswith("text/event-stream"):
                        if response.status_code in RETRIED_STATUSES and failures < self.max_retries:
                            failures += 1
                            response.read()
                            self._sleep(_retry_after(response) or self._backoff(failures))
                            continue
                        return last  # no events here (or an error the polling will report)
                    got = False
                    for event_id, data in _events(response.iter_lines()):
                        failures, got = 0, True
                        last_id = event_id or last_id
                        last = Status.from_document(json.loads(data))
                        yield last
                        if last.is_terminal:
                            return last
            except httpx.TransportError:
                pass  # a lost connection: reconnect with Last-Event-ID, after a back-off
            else:
                if got:
                    continue  # the server ended the stream early (its SSE_MAX_STREAM_S): reconnect at once
            if failures >= self.max_retries:
                return last
            self._sleep(self._backoff(failures))
            failures += 1


class _RetryableStatus(Exception):
    """The storage answered with a status worth retrying (a fresh presigned URL is fetched)."""


def _events(lines: Iterator[str]) -> Iterator[tuple[str | None, str]]:
    """(id, data) of each `status` event of a text/event-stream (the SSE format, as WHATWG defines it)."""
    event_id, event, data = None, "message", []
    for line in lines:
        if not line:
            if data and event == "status":
                yield event_id, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)
