"""The fix: clients that initiate a job, poll its status honouring Retry-After, follow the
download redirect to S3 and check every byte of the zip they get.

Each download's end-to-end time, from initiate to verified artifact, is reported as its own
request type, so p50/p95 time-to-file stands next to the HTTP figures:

    POST  initiate                          202 in milliseconds
    GET   /v1/download/status/[id]          every poll (one Redis read each)
    GET   /v1/download/[id]                 302 to a presigned S3 URL
    GET   artifact (S3)                     the zip, straight from the object store
    JOB   time-to-file                      initiate -> verified zip; a failure if a byte differs
    JOB   job [failed|cancelled|gave up]    downloads that never completed

    locust -f loadtests/polling.py --host http://127.0.0.1:18080 --headless -u 8 -r 8 -t 30s --time-scale 0.02
"""

from __future__ import annotations

import io
import random
import time
import zipfile

from common import API_CALL_TIMEOUT_S, auth_headers, available_file_id, report, scaled, time_scale, unavailable_file_id
from locust import HttpUser, task

from dlkit import files
from dlkit.settings import LONGEST_DOWNLOAD_S

TERMINAL = {"completed", "failed", "cancelled"}
# How long a user waits for one job before giving up (real seconds): the longest download plus
# generous room for queueing behind other users' jobs.
GIVE_UP_AFTER_S = 10 * LONGEST_DOWNLOAD_S
# Think time between two downloads a user wants (real seconds). It keeps the offered load near
# what the embedded stack's few workers serve: more would measure the queue, not the API.
THINK_S = (60, 180)


def wanted_files() -> list[int]:
    """Two or three files, one of them possibly unavailable (the job reports it and goes on)."""
    ids = {available_file_id() for _ in range(random.randint(1, 2))}
    if random.random() < 0.5:
        ids.add(unavailable_file_id())
    return sorted(ids)


def retry_after_s(response, default: float) -> float:
    try:
        return float(response.headers.get("Retry-After", default))
    except ValueError:
        return default


def verify(content: bytes, file_ids: list[int]) -> str | None:
    """None if the zip holds exactly the available files, byte for byte; else what is wrong."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile:
        return "artifact is not a zip"
    expected = {files.file_name(i): i for i in file_ids if files.is_available(i)}
    if sorted(archive.namelist()) != sorted(expected):
        return f"artifact holds {sorted(archive.namelist())}, expected {sorted(expected)}"
    for name, file_id in expected.items():
        if archive.read(name) != files.file_bytes(file_id):
            return f"{name} differs from file {file_id}'s bytes"
    return None


def report_job(user: HttpUser, name: str, started: float, length: int = 0, error: str | None = None) -> str | None:
    """A custom Locust request whose response time is the download's whole duration; returns `error`."""
    report(user, "JOB", name, started, length, error)
    return error


def initiate(user: HttpUser, file_ids: list[int], headers: dict[str, str], name: str = "initiate") -> str | None:
    """POST initiate; the job id, or None (recorded as a failure)."""
    with user.client.post(
        "/v1/download/initiate",
        json={"file_ids": file_ids},
        headers=headers,
        name=name,
        timeout=API_CALL_TIMEOUT_S,
        catch_response=True,
    ) as response:
        if response.status_code != 202:
            response.failure(f"initiate answered {response.status_code}")
            return None
        return response.json()["jobId"]


def poll_and_fetch(user: HttpUser, job_id: str, file_ids: list[int], started: float) -> str | None:
    """Poll until the job ends, download and verify its artifact, report it as a JOB request.

    Returns None when the verified zip is in hand, else what went wrong.
    """
    env = user.environment
    headers = auth_headers(env)
    poll_default = scaled(env, 5)
    while True:
        with user.client.get(
            f"/v1/download/status/{job_id}",
            headers=headers,
            name="/v1/download/status/[id]",
            timeout=API_CALL_TIMEOUT_S,
            catch_response=True,
        ) as response:
            if response.status_code not in (200, 410):
                response.failure(f"status answered {response.status_code}")
                doc = None
            else:
                doc = response.json()
        if doc is not None and doc["status"] in TERMINAL:
            break
        if time.monotonic() - started > scaled(env, GIVE_UP_AFTER_S):
            return report_job(
                user,
                "job [gave up]",
                started,
                error=f"job {job_id} not finished after {scaled(env, GIVE_UP_AFTER_S):g} s",
            )
        # Retry-After is the server's pacing: a client that polls faster only adds load.
        time.sleep(retry_after_s(response, poll_default))

    if doc["status"] != "completed":
        return report_job(
            user, f"job [{doc['status']}]", started, error=f"job {job_id} {doc['status']}: {doc['error']}"
        )
    redirect = user.client.get(
        f"/v1/download/{job_id}",
        headers=headers,
        name="/v1/download/[id]",
        allow_redirects=False,
        timeout=API_CALL_TIMEOUT_S,
    )
    if redirect.status_code != 302:
        return report_job(user, "time-to-file", started, error=f"download answered {redirect.status_code}")
    # Straight to the object store, without our API key: the presigned URL is the credential.
    artifact = user.client.get(
        redirect.headers["Location"],
        name="artifact (S3)",
        headers={"Authorization": None},
        timeout=API_CALL_TIMEOUT_S + scaled(env, 60),
    )
    if artifact.status_code != 200:
        return report_job(user, "time-to-file", started, error=f"artifact answered {artifact.status_code}")
    return report_job(user, "time-to-file", started, len(artifact.content), verify(artifact.content, file_ids))


class PollingUser(HttpUser):
    """Wants a zip of a few files every minute or three (scaled), and waits for it properly."""

    def wait_time(self) -> float:
        return random.uniform(*THINK_S) * time_scale(self.environment)

    @task
    def download(self) -> None:
        file_ids = wanted_files()
        started = time.monotonic()
        job_id = initiate(self, file_ids, auth_headers(self.environment))
        if job_id is None:
            report_job(self, "job [not accepted]", started, error="initiate failed")
            return
        poll_and_fetch(self, job_id, file_ids, started)
