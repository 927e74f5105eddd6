"""The async job API end to end, through nginx, against the real stack."""

from __future__ import annotations

import io
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from rq.job import Job as RQJob

from dlkit import files
from dlkit.jobs import owner_index_key
from dlkit.storage import artifact_key, s3_client

from .support import available_ids, initiate, poll


def test_initiate_answers_202_with_location_and_retry_after(alice):
    r = initiate(alice, [70000, 70001])
    body = r.json()
    assert body["status"] == "queued" and body["totalFileIds"] == 2
    assert r.headers["Location"] == f"/v1/download/status/{body['jobId']}"
    assert float(r.headers["Retry-After"]) > 0
    assert r.elapsed.total_seconds() < 2  # never waits for the work


def test_a_job_completes_and_its_zip_holds_exactly_the_available_files(alice, stack):
    ids = [70000, 70001, 70007, 70013, 70014]  # 70001 and 70013 are unavailable
    job_id = initiate(alice, ids).json()["jobId"]
    final = poll(alice, job_id)[-1]
    assert final["status"] == "completed", final
    assert final["unavailableFileIds"] == [70001, 70013]
    assert final["progress"] == 100 and final["processedFiles"] == final["totalFiles"] == 5

    redirect = alice.get(f"/v1/download/{job_id}")
    assert redirect.status_code == 302
    url = redirect.headers["Location"]
    artifact = httpx.get(url)
    assert artifact.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(artifact.content))
    assert sorted(archive.namelist()) == sorted(files.file_name(i) for i in (70000, 70007, 70014))
    for file_id in (70000, 70007, 70014):
        assert archive.read(files.file_name(file_id)) == files.file_bytes(file_id)
    assert final["artifact"]["size"] == len(artifact.content)


def test_presigned_url_is_refused_when_tampered_and_after_expiry(alice):
    job_id = initiate(alice, [70000]).json()["jobId"]
    assert poll(alice, job_id)[-1]["status"] == "completed"
    url = alice.get(f"/v1/download/{job_id}").headers["Location"]
    query = parse_qs(urlsplit(url).query)
    signature = query["X-Amz-Signature"][0]
    tampered = url.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    assert httpx.get(tampered).status_code == 403
    assert httpx.get(url.replace(f"downloads/{job_id}", "downloads/other")).status_code == 403
    assert httpx.get(url).status_code == 200

    # Expiry is a wall-clock fact of SigV4: wait it out (1 s at this TIME_SCALE).
    signed_at = time.mktime(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")) - time.timezone
    expires = signed_at + int(query["X-Amz-Expires"][0])
    time.sleep(max(0.0, expires - time.time()) + 1.1)
    assert httpx.get(url).status_code == 403


def test_progress_never_goes_back_counts_add_up_and_estimate_falls(alice):
    ids = available_ids(12)
    job_id = initiate(alice, ids).json()["jobId"]
    seen = poll(alice, job_id)
    assert seen[-1]["status"] == "completed"
    processing = [d for d in seen if d["status"] == "processing"]
    assert len(processing) >= 3, "the poll interval should see the job work"
    progress = [d["progress"] for d in seen]
    assert progress == sorted(progress)
    for doc in seen:
        assert doc["processedFiles"] <= doc["totalFiles"] == 12
        assert (
            doc["progress"] == pytest.approx(100 * doc["processedFiles"] / 12, abs=0.1) or doc["status"] == "completed"
        )
    estimates = [d["estimatedSecondsRemaining"] for d in processing]
    assert estimates == sorted(estimates, reverse=True)
    assert estimates[0] > estimates[-1]
    assert seen[-1]["estimatedSecondsRemaining"] is None


def test_a_job_with_no_available_file_fails_with_a_clear_error(alice):
    job_id = initiate(alice, [70001, 70002]).json()["jobId"]
    final = poll(alice, job_id)[-1]
    assert final["status"] == "failed"
    assert "none of the 2 requested files is available" in final["error"]
    r = alice.get(f"/v1/download/{job_id}")
    assert r.status_code == 409 and r.headers["Content-Type"] == "application/problem+json"


def test_large_artifacts_use_multipart_upload(alice, settings):
    ids = available_ids(24, start=90_000)  # about 12 MiB: more than one 8 MiB part
    expected = sum(files.file_size(i) for i in ids)
    assert expected > settings.S3_PART_SIZE_BYTES
    job_id = initiate(alice, ids).json()["jobId"]
    final = poll(alice, job_id)[-1]
    assert final["status"] == "completed", final
    head = s3_client(settings).head_object(Bucket=settings.S3_BUCKET_NAME, Key=artifact_key(job_id))
    assert head["ETag"].strip('"').endswith("-2"), "multipart ETags end in -<parts>"
    artifact = httpx.get(alice.get(f"/v1/download/{job_id}").headers["Location"])
    archive = zipfile.ZipFile(io.BytesIO(artifact.content))
    assert all(archive.read(files.file_name(i)) == files.file_bytes(i) for i in ids)


def test_someone_elses_job_is_not_found(alice, bob):
    job_id = initiate(alice, [70000]).json()["jobId"]
    for method, path in [
        ("GET", f"/v1/download/status/{job_id}"),
        ("GET", f"/v1/download/{job_id}"),
        ("POST", f"/v1/download/cancel/{job_id}"),
    ]:
        r = bob.request(method, path)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["Content-Type"] == "application/problem+json"
    assert job_id not in [j["jobId"] for j in bob.get("/v1/downloads").json()["jobs"]]
    assert poll(alice, job_id)[-1]["status"] == "completed"  # bob's cancel changed nothing


def test_listing_shows_the_callers_jobs_newest_first(alice):
    ids = [initiate(alice, [70000 + 7 * n]).json()["jobId"] for n in range(3)]
    listed = [j["jobId"] for j in alice.get("/v1/downloads", params={"limit": 3}).json()["jobs"]]
    assert listed == ids[::-1]
    second_page = alice.get("/v1/downloads", params={"limit": 2, "offset": 1}).json()["jobs"]
    assert [j["jobId"] for j in second_page] == ids[::-1][1:3]


def test_idempotent_retries_create_one_job(alice, redis, settings):
    ids = available_ids(2, start=80_000)
    before = redis.zcard(owner_index_key("alice"))
    first = initiate(alice, ids, headers={"Idempotency-Key": "order-42"})
    again = initiate(alice, ids, headers={"Idempotency-Key": "order-42"})
    assert again.json()["jobId"] == first.json()["jobId"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert redis.zcard(owner_index_key("alice")) == before + 1

    conflict = alice.post("/v1/download/initiate", json={"file_ids": ids[:1]}, headers={"Idempotency-Key": "order-42"})
    assert conflict.status_code == 422
    assert conflict.json()["type"] == "urn:dlkit:problem:idempotency-key-reused"


def test_concurrent_idempotent_retries_create_one_job(stack, redis):
    from .support import client_for

    ids = available_ids(2, start=81_000)
    before = redis.zcard(owner_index_key("alice"))

    def send(_):
        with client_for(stack, "alice") as client:
            return initiate(client, ids, headers={"Idempotency-Key": "burst-7"}).json()["jobId"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        job_ids = set(pool.map(send, range(16)))
    assert len(job_ids) == 1
    assert redis.zcard(owner_index_key("alice")) == before + 1
    (job_id,) = job_ids
    assert RQJob.exists(job_id, connection=redis)


def test_the_same_key_from_another_caller_is_another_job(alice, bob):
    a = initiate(alice, [70000], headers={"Idempotency-Key": "shared"}).json()["jobId"]
    b = initiate(bob, [70000], headers={"Idempotency-Key": "shared"}).json()["jobId"]
    assert a != b
