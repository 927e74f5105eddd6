"""The job record's pure parts: serialisation and the figures the status endpoint reports."""

from dlkit.jobs import Job, JobStatus


def make_job(**kw) -> Job:
    base = dict(
        id="j",
        owner="o",
        status=JobStatus.QUEUED,
        file_ids=[70000, 70001, 70007, 70014],
        delay_s=8.0,
        created_at=1000.0,
        updated_at=1000.0,
    )
    return Job(**{**base, **kw})


def test_hash_round_trip_keeps_every_field():
    job = make_job(
        status=JobStatus.COMPLETED,
        processed_files=4,
        unavailable_file_ids=[70001],
        started_at=1001.5,
        finished_at=1010.25,
        heartbeat_at=1010.0,
        artifact_key="k",
        artifact_size=123,
        artifact_sha256="ab",
        error=None,
    )
    assert Job.from_hash(job.to_hash()) == job


def test_estimate_falls_while_processing_and_is_none_when_done():
    job = make_job(status=JobStatus.PROCESSING, started_at=1000.0)
    estimates = []
    for t, processed in [(1000.0, 0), (1001.0, 0), (1002.5, 1), (1005.0, 2), (1007.9, 3), (1009.0, 3)]:
        job.processed_files = processed
        estimates.append(job.estimated_seconds_remaining(now=t))
    assert estimates == sorted(estimates, reverse=True)
    assert estimates[0] == 8.0 and estimates[-1] == 0.0
    assert make_job(status=JobStatus.COMPLETED).estimated_seconds_remaining(now=0) is None


def test_progress_is_the_share_of_files_processed():
    assert make_job(status=JobStatus.PROCESSING, processed_files=4).progress == 100.0
    assert make_job(status=JobStatus.PROCESSING, processed_files=1).progress == 25.0
    assert make_job(status=JobStatus.FAILED, processed_files=2).progress == 50.0


def test_api_document_has_the_contract_fields():
    doc = make_job().to_api(now=1000.0)
    assert {
        "jobId",
        "status",
        "progress",
        "totalFiles",
        "processedFiles",
        "downloadUrl",
        "error",
        "createdAt",
        "updatedAt",
        "estimatedSecondsRemaining",
    } <= doc.keys()
    assert doc["createdAt"] == "1970-01-01T00:16:40.000Z"
