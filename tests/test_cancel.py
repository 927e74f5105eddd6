"""Cancellation stops work: a queued job never starts, a running one stops within a file's step
and leaves no artifact (and no multipart upload) behind. On the slow stack, where every job
takes 2.4 s, so there is time to act while it runs."""

from __future__ import annotations

import time

from rq import Queue
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus

from dlkit.storage import artifact_key, s3_client

from .support import TERMINAL, available_ids, initiate, poll


def no_artifact(settings, job_id: str) -> bool:
    s3 = s3_client(settings)
    objects = s3.list_objects_v2(Bucket=settings.S3_BUCKET_NAME, Prefix=artifact_key(job_id)).get("KeyCount", 0)
    uploads = [
        u
        for u in s3.list_multipart_uploads(Bucket=settings.S3_BUCKET_NAME).get("Uploads", [])
        if u["Key"] == artifact_key(job_id)
    ]
    return objects == 0 and not uploads


def wait_rq_finished(redis, job_id: str, timeout_s: float = 20) -> RQJob:
    """Until the worker has returned from the job. RQ publishes no event for this, so poll it."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = RQJob.fetch(job_id, connection=redis)
        if job.get_status() in (RQStatus.FINISHED, RQStatus.FAILED, RQStatus.CANCELED, RQStatus.STOPPED):
            return job
        assert time.monotonic() < deadline, f"worker still on {job_id}: {job.get_status()}"
        time.sleep(0.05)


def test_cancel_a_queued_job(slow, workers_stopped):
    with slow.client() as alice:
        job_id = initiate(alice, available_ids(3)).json()["jobId"]
        assert alice.get(f"/v1/download/status/{job_id}").json()["status"] == "queued"

        r = alice.post(f"/v1/download/cancel/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        status = alice.get(f"/v1/download/status/{job_id}")
        assert status.status_code == 410 and status.json()["status"] == "cancelled"
        assert "Retry-After" not in status.headers
        # Taken off the queue: no worker will ever pick it up.
        assert job_id not in Queue(slow.settings.QUEUE_NAME, connection=slow.redis).job_ids
        assert alice.get(f"/v1/download/{job_id}").status_code == 410
    assert no_artifact(slow.settings, job_id)


def test_a_cancelled_job_that_is_still_queued_never_starts(slow, workers_stopped):
    """Even if it stays in RQ's queue (a cancel racing the dequeue), the worker refuses it."""
    with slow.client() as alice:
        job_id = initiate(alice, available_ids(2)).json()["jobId"]
        slow.redis.hset(f"dlkit:job:{job_id}", "status", "cancelled")  # cancelled, still queued in RQ
        for name in [n for n in slow.stack.components if n.startswith("worker")]:
            slow.stack.start_component(name)
        assert wait_rq_finished(slow.redis, job_id).return_value() == {"jobId": job_id, "skipped": "cancelled"}
        doc = alice.get(f"/v1/download/status/{job_id}").json()
        assert doc["status"] == "cancelled" and doc["processedFiles"] == 0
    assert no_artifact(slow.settings, job_id)


def test_cancel_a_running_job_stops_it_and_leaves_nothing(slow):
    # 24 files of ~0.5 MiB: past 18 files the zip has crossed the 8 MiB part size, so a
    # multipart upload is open when the cancel arrives.
    with slow.client() as alice:
        job_id = initiate(alice, available_ids(24, start=91_000)).json()["jobId"]
        seen = poll(alice, job_id, until=lambda d: d["processedFiles"] >= 18 or d["status"] in TERMINAL)
        assert seen[-1]["status"] == "processing"

        r = alice.post(f"/v1/download/cancel/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        wait_rq_finished(slow.redis, job_id)
        final = alice.get(f"/v1/download/status/{job_id}")
        assert final.status_code == 410 and final.json()["status"] == "cancelled"
        assert final.json()["processedFiles"] < 24
    assert no_artifact(slow.settings, job_id)


def test_cancel_is_idempotent_and_refused_once_finished(alice):
    done = initiate(alice, [70000]).json()["jobId"]
    assert poll(alice, done)[-1]["status"] == "completed"
    r = alice.post(f"/v1/download/cancel/{done}")
    assert r.status_code == 409 and r.json()["type"] == "urn:dlkit:problem:job-finished"
    assert alice.get(f"/v1/download/status/{done}").json()["status"] == "completed"

    running = initiate(alice, available_ids(5)).json()["jobId"]
    assert alice.post(f"/v1/download/cancel/{running}").status_code == 200
    assert alice.post(f"/v1/download/cancel/{running}").status_code == 200
