"""Bounded cost: the per-owner cap on active jobs (MAX_ACTIVE_JOBS_PER_OWNER), the per-job byte
budget (MAX_JOB_BYTES), the embedded S3 holding the largest jobs the settings allow, and /health
reporting a store that cannot be written.

The cap against the tests' own Valkey (the race made deterministic) and through an in-process app
on the session stack's Valkey; the budget and the largest jobs through the real stack; the full store
on a real SeaweedFS of its own with 1 MB volumes.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError
from mirakuru import TCPExecutor
from rq import Queue

from dlkit import files
from dlkit.jobs import TooManyActiveJobs, active_key, owner_index_key
from dlkit.kit import ROOT
from dlkit.kit.component import unmatchable
from dlkit.kit.recipes import SEAWEEDFS_MAX_JOBS_HELD, SEAWEEDFS_VOLUME_MB, seaweedfs_volumes, weed_binary
from dlkit.kit.stack import free_base_port
from dlkit.settings import FILE_ID_MIN, MAX_FILES_PER_JOB, Settings
from dlkit.storage import HEALTH_KEY, probe_write

from .support import available_ids, initiate, poll

INITIATE = "/v1/download/initiate"
MiB = 1024 * 1024


def no_enqueue(pipe, job_id):
    pass


# -- the byte budget: exact, from the ids ---------------------------------------------------------


class _Stream:
    """A sink that cannot seek, like the worker's MultipartUpload."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("ids", [[70000], [70001], available_ids(40) + [70001, 99_999_995]])
def test_archive_size_is_the_size_of_the_zip_the_worker_writes(ids):
    stream = _Stream()
    with zipfile.ZipFile(stream, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for file_id in filter(files.is_available, ids):
            archive.writestr(
                zipfile.ZipInfo(files.file_name(file_id), date_time=(1980, 1, 1, 0, 0, 0)), files.file_bytes(file_id)
            )
    assert files.archive_size(ids) == stream.size


MODULUS = files.MAX_FILE_SIZE - files.MIN_FILE_SIZE + 1


def largest_ids(budget: int, batch: int = 0) -> list[int]:
    """Available ids whose archive is as large as `budget` allows: the biggest files (1 MiB) first,
    then the one file that fills the rest best. file_size is 16 KiB + (id * 7919) mod M, so the id
    with a given remainder r is r / (7 * 7919) mod M, times 7 (an available id); adding 7 * M keeps
    the size, so each `batch` gives other ids of the same sizes."""
    inverse = pow(7 * 7919, -1, MODULUS)

    def id_of_size(size: int) -> int:
        return 7 * ((size - files.MIN_FILE_SIZE) * inverse % MODULUS + batch * MODULUS)

    ids: list[int] = []
    size = files.MAX_FILE_SIZE
    while True:
        file_id = id_of_size(size)
        size -= 1
        if file_id < FILE_ID_MIN:
            continue
        if files.archive_size([*ids, file_id]) > budget:
            break
        ids.append(file_id)
    # The last file: the largest that still fits.
    for size in range(min(budget - files.archive_size(ids), files.MAX_FILE_SIZE), files.MIN_FILE_SIZE, -1):
        file_id = id_of_size(size)
        if file_id >= FILE_ID_MIN and file_id not in ids and files.archive_size([*ids, file_id]) <= budget:
            return [*ids, file_id]
    return ids


def test_the_largest_ids_fill_the_budget():
    budget = Settings().MAX_JOB_BYTES
    ids = largest_ids(budget)
    assert len(set(ids)) == len(ids) <= MAX_FILES_PER_JOB and all(files.is_available(i) for i in ids)
    assert budget - 1024 < files.archive_size(ids) <= budget


# -- the cap, on the store: atomic, replay-safe, bounded -------------------------------------------


@pytest.fixture
def store(valkey):
    from dlkit.jobs import JobStore

    valkey.flushdb()
    return JobStore(valkey, ttl_s=600)


@pytest.fixture
def owner():
    return f"owner-{uuid.uuid4().hex[:8]}"


def test_the_cap_refuses_past_the_limit_and_writes_nothing(store, valkey, owner):
    jobs = [store.create(owner, [70000], 1.0, no_enqueue, max_active=3)[0] for _ in range(3)]
    keys = sorted(valkey.keys("*"))
    with pytest.raises(TooManyActiveJobs) as refused:
        store.create(owner, [70000], 1.0, no_enqueue, max_active=3)
    assert (refused.value.active, refused.value.limit) == (3, 3)
    assert sorted(valkey.keys("*")) == keys
    # Another owner has a cap of its own.
    assert store.create("someone-else", [70000], 1.0, no_enqueue, max_active=3)[1]
    # A finished job frees its slot, whichever way it finished; its entry leaves the set.
    store.cancel(jobs[0].id)
    store.start(jobs[1].id)
    store.complete(jobs[1].id, "k", 1, "x")
    more = [store.create(owner, [70000], 1.0, no_enqueue, max_active=3)[0] for _ in range(2)]
    with pytest.raises(TooManyActiveJobs):
        store.create(owner, [70000], 1.0, no_enqueue, max_active=3)
    members = {m.decode() for m in valkey.zrange(active_key(owner), 0, -1)}
    assert members == {jobs[2].id, *(j.id for j in more)}
    assert 590 < valkey.ttl(active_key(owner)) <= 600


def test_a_replay_is_not_counted_again(store, owner):
    first, created = store.create(owner, [70000], 1.0, no_enqueue, ("key-1", "body"), max_active=2)
    store.create(owner, [70000], 1.0, no_enqueue, max_active=2)
    # At the cap, the same key and body still get the first job back.
    again, created_again = store.create(owner, [70000], 1.0, no_enqueue, ("key-1", "body"), max_active=2)
    assert created and not created_again and again.id == first.id
    with pytest.raises(TooManyActiveJobs):
        store.create(owner, [70000], 1.0, no_enqueue, ("key-2", "body"), max_active=2)


def test_a_create_racing_another_never_passes_the_cap(store, valkey, owner):
    """Another create of the same owner lands while one is being prepared (its queue entry built): the
    cap's check and every write of a create are one script, so whichever runs first takes the last
    slot and the other is refused; the cap is never passed."""
    store.create(owner, [70000], 1.0, no_enqueue, max_active=2)
    raced = []

    def enqueue_while_another_creates(pipe, job_id):
        raced.append(store.create(owner, [70007], 1.0, no_enqueue, max_active=2)[1])

    with pytest.raises(TooManyActiveJobs):
        store.create(owner, [70000], 1.0, enqueue_while_another_creates, max_active=2)
    assert raced == [True]
    assert valkey.zcard(active_key(owner)) == 2 == valkey.zcard(owner_index_key(owner))


def test_a_create_that_fails_gives_its_slot_back(store, valkey, owner):
    def broken_enqueue(pipe, job_id):
        raise RuntimeError("queue down")

    with pytest.raises(RuntimeError):
        store.create(owner, [70000], 1.0, broken_enqueue, max_active=1)
    assert valkey.zcard(active_key(owner)) == 0
    assert store.create(owner, [70000], 1.0, no_enqueue, max_active=1)[1]


def test_a_slot_reserved_by_a_create_that_died_frees_itself(valkey, owner):
    from dlkit.jobs import RESERVATION_GRACE_S, JobStore

    valkey.flushdb()
    now = [1_000_000.0]
    store = JobStore(valkey, ttl_s=600, clock=lambda: now[0])
    # What an API process killed between the reservation and its EXEC leaves: an entry, no record
    # (an expired job's entry looks the same, a day later).
    valkey.zadd(active_key(owner), {"died-mid-create": now[0]})
    with pytest.raises(TooManyActiveJobs):
        store.create(owner, [70000], 1.0, no_enqueue, max_active=1)
    now[0] += RESERVATION_GRACE_S + 1
    assert store.create(owner, [70000], 1.0, no_enqueue, max_active=1)[1]


def test_no_cap_writes_no_active_set(store, valkey, owner):
    for _ in range(3):
        store.create(owner, [70000], 1.0, no_enqueue, max_active=0)
    assert not valkey.exists(active_key(owner))


# -- the cap, through the API ---------------------------------------------------------------------


@pytest.fixture
def capped(make_app, settings):
    """An in-process app on the session stack's Valkey whose jobs go to a queue no worker serves,
    so they stay queued: a fresh owner, a cap of 3."""
    owner, key = f"capped-{uuid.uuid4().hex[:8]}", f"key-{uuid.uuid4().hex}"
    queue_name = f"unserved-{uuid.uuid4().hex[:8]}"
    app = make_app(API_KEYS=f"{key}:{owner}", QUEUE_NAME=queue_name, MAX_ACTIVE_JOBS_PER_OWNER=3)
    yield app, owner, {"Authorization": f"Bearer {key}"}
    queue = Queue(queue_name, connection=app.extensions["dlkit"].redis)
    queue.delete(delete_jobs=True)


def test_concurrent_initiates_past_the_cap_get_429_problems(capped):
    app, owner, auth = capped
    barrier = threading.Barrier(12)

    def send(n: int):
        with app.test_client() as client:
            barrier.wait()
            return client.post(INITIATE, json={"file_ids": [70000 + 7 * n]}, headers=auth)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(12)))
    assert sorted(r.status_code for r in answers) == [202] * 3 + [429] * 9
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.mimetype == "application/problem+json"
    problem = refused.get_json()
    assert problem["type"] == "urn:dlkit:problem:too-many-active-jobs"
    assert (problem["active"], problem["limit"]) == (3, 3) and "limit is 3" in problem["detail"]
    assert float(refused.headers["Retry-After"]) > 0
    redis = app.extensions["dlkit"].redis
    assert redis.zcard(owner_index_key(owner)) == 3 == redis.zcard(active_key(owner))


def test_a_cancelled_job_frees_a_slot_and_a_replay_is_not_refused(capped):
    app, _, auth = capped
    client = app.test_client()
    replayable = {**auth, "Idempotency-Key": "same"}
    ids = [client.post(INITIATE, json={"file_ids": [70000]}, headers=replayable).get_json()["jobId"]]
    ids += [client.post(INITIATE, json={"file_ids": [70000 + 7 * n]}, headers=auth).get_json()["jobId"] for n in (1, 2)]
    assert client.post(INITIATE, json={"file_ids": [70021]}, headers=auth).status_code == 429
    replay = client.post(INITIATE, json={"file_ids": [70000]}, headers=replayable)
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert client.post(f"/v1/download/cancel/{ids[1]}", headers=auth).status_code == 200
    assert client.post(INITIATE, json={"file_ids": [70021]}, headers=auth).status_code == 202
    assert client.post(INITIATE, json={"file_ids": [70028]}, headers=auth).status_code == 429


def test_the_openapi_document_names_both_refusals():
    from app import create_app

    app = create_app(Settings())
    try:
        responses = app.api_doc["paths"][INITIATE]["post"]["responses"]
    finally:
        app.extensions["dlkit"].redis.close()
        app.extensions["dlkit"].limiter.storage.get_connection().close()
    assert "urn:dlkit:problem:job-too-large" in responses["422"]["description"]
    assert "urn:dlkit:problem:too-many-active-jobs" in responses["429"]["description"]
    assert {*responses["422"]["content"], *responses["429"]["content"]} == {"application/problem+json"}


# -- the budget and the largest jobs, on the real stack ---------------------------------------------


def test_a_job_past_the_byte_budget_is_a_422_before_anything_is_written(alice, redis, settings):
    ids = largest_ids(settings.MAX_JOB_BYTES)
    over = [*ids, next(i for i in available_ids(len(ids) + 1, 20_000) if i not in ids)]
    before = redis.zcard(owner_index_key("alice"))
    for file_ids in (over, available_ids(MAX_FILES_PER_JOB)):
        r = alice.post(INITIATE, json={"file_ids": file_ids})
        assert r.status_code == 422 and r.headers["Content-Type"] == "application/problem+json", r.text
        problem = r.json()
        assert problem["type"] == "urn:dlkit:problem:job-too-large"
        assert problem["size"] == files.archive_size(file_ids) > problem["limit"] == settings.MAX_JOB_BYTES
        assert str(problem["size"]) in problem["detail"] and str(problem["limit"]) in problem["detail"]
    assert redis.zcard(owner_index_key("alice")) == before


def test_two_of_the_largest_jobs_at_once_complete_and_the_stack_keeps_working(alice, stack, settings):
    budget = settings.MAX_JOB_BYTES
    first, second = largest_ids(budget), largest_ids(budget, batch=1)
    assert not set(first) & set(second)
    assert all(budget - 1024 < files.archive_size(ids) <= budget for ids in (first, second))
    started = time.monotonic()
    job_ids = [initiate(alice, ids).json()["jobId"] for ids in (first, second)]
    finals = [poll(alice, job_id, timeout_s=300)[-1] for job_id in job_ids]
    elapsed = time.monotonic() - started
    print(f"two {files.archive_size(first) / MiB:.1f} MiB jobs completed in {elapsed:.1f} s")
    for final, ids in zip(finals, (first, second), strict=True):
        assert final["status"] == "completed", final
        assert final["artifact"]["size"] == files.archive_size(ids)
    # The stack keeps working: a new small job completes, and the store takes writes.
    small = initiate(alice, [70000]).json()["jobId"]
    assert poll(alice, small)[-1]["status"] == "completed"
    assert alice.get("/health").json()["checks"]["storage"] == "ok"
    s3 = _s3(settings.S3_ENDPOINT, settings)
    for job_id in job_ids:  # give the space back to the session's other tests
        s3.delete_object(Bucket=settings.S3_BUCKET_NAME, Key=f"downloads/{job_id}.zip")


def test_the_embedded_s3_is_sized_from_the_budget_and_compose_agrees():
    default = Settings().MAX_JOB_BYTES
    assert seaweedfs_volumes(default) * SEAWEEDFS_VOLUME_MB * MiB >= SEAWEEDFS_MAX_JOBS_HELD * default
    assert seaweedfs_volumes(4 * default) == 4 * seaweedfs_volumes(default)
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["s3"]["command"]
    assert f"-master.volumeSizeLimitMB={SEAWEEDFS_VOLUME_MB}" in command
    assert f"-volume.max={seaweedfs_volumes(default)}" in command


# -- /health and a store that cannot be written -----------------------------------------------------


def _s3(endpoint: str, settings: Settings):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=settings.S3_REGION,
        aws_access_key_id=settings.S3_ACCESS_KEY_ID or "any",
        aws_secret_access_key=settings.S3_SECRET_ACCESS_KEY or "any",
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 1}),
    )


@pytest.fixture
def tiny_seaweedfs(tmp_path: Path):
    """A SeaweedFS of its own with three 1 MB volumes: full after about 3 MB."""
    base = free_base_port(span=8)
    log = (tmp_path / "weed.log").open("wb")
    server = unmatchable(
        TCPExecutor(
            [
                weed_binary(),
                "server",
                f"-dir={tmp_path / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={base}",
                f"-master.port.grpc={base + 1}",
                f"-volume.port={base + 2}",
                f"-volume.port.grpc={base + 3}",
                "-filer",
                f"-filer.port={base + 4}",
                f"-filer.port.grpc={base + 5}",
                "-s3",
                f"-s3.port={base + 6}",
                f"-s3.port.grpc={base + 7}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=1",
                "-volume.max=3",
                "-volume.preStopSeconds=0",
                "-master.telemetry=false",
            ],
            host="127.0.0.1",
            port=base + 6,
            timeout=60,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    (tmp_path / "data").mkdir()
    server.start()
    yield f"http://127.0.0.1:{base + 6}"
    server.kill()
    log.close()


def test_health_reports_a_full_store_that_still_answers_head_bucket(tiny_seaweedfs, make_app, settings):
    bucket = "dlkit-full"
    s3 = _s3(tiny_seaweedfs, settings)
    deadline = time.monotonic() + 60
    while True:  # the S3 port answers before the filer and master are ready for buckets
        try:
            s3.create_bucket(Bucket=bucket)
            probe_write(s3, bucket)
            break
        except Exception:
            assert time.monotonic() < deadline, "SeaweedFS never took a write"
            time.sleep(0.2)
    app = make_app(S3_ENDPOINT=tiny_seaweedfs, S3_BUCKET_NAME=bucket, S3_FORCE_PATH_STYLE=True)
    client = app.test_client()
    assert client.get("/health").get_json()["checks"]["storage"] == "ok"
    blob = bytes(512 * 1024)
    for n in range(40):
        try:
            s3.put_object(Bucket=bucket, Key=f"downloads/{n}", Body=blob)
        except ClientError:
            break
    else:
        pytest.fail("the store never filled up")
    s3.head_bucket(Bucket=bucket)  # what /health asked before: still fine
    started = time.monotonic()
    r = client.get("/health")
    took = time.monotonic() - started  # one attempt, no retry backoff
    health = r.get_json()
    assert r.status_code == 503 and health["status"] == "unhealthy"
    assert health["checks"]["storage"] == "error" and health["checks"]["redis"] == "ok"
    assert took < 1.0, f"/health took {took:.2f} s"
    # The probes that succeeded left one 2-byte object, whatever their number.
    assert [(o["Key"], o["Size"]) for o in s3.list_objects_v2(Bucket=bucket)["Contents"] if o["Key"] == HEALTH_KEY] == [
        (HEALTH_KEY, 2)
    ]
