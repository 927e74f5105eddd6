"""The job store against a real Valkey (of its own, no stack): forward-only states, TTLs, lost jobs
(re-queue, attempts), listing."""

from __future__ import annotations

import uuid

import pytest

from dlkit.jobs import JobStatus, JobStore, job_key, owner_index_key, processing_index_key


def no_enqueue(pipe, job_id):
    pass


@pytest.fixture
def redis(valkey):
    """This module's Redis: the tests' own Valkey, wiped per test (rq's tests do the same)."""
    valkey.flushdb()
    return valkey


@pytest.fixture
def owner():
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def clock():
    now = [1_000_000.0]
    return now


@pytest.fixture
def store(redis, clock):
    return JobStore(redis, ttl_s=600, clock=lambda: clock[0])


def test_a_new_job_is_queued_with_a_ttl(store, redis, owner):
    job, created = store.create(owner, [70000, 70001], 2.0, no_enqueue)
    assert created and store.get(job.id) == job
    assert job.status is JobStatus.QUEUED
    assert 590 < redis.ttl(job_key(job.id)) <= 600
    assert 590 < redis.ttl(owner_index_key(owner)) <= 600


def test_states_only_move_forward(store, owner):
    job, _ = store.create(owner, [70000], 1.0, no_enqueue)
    assert store.start(job.id).applied
    assert not store.start(job.id).applied  # a second worker cannot take it
    assert store.cancel(job.id).applied
    # The worker finishing after the cancel changes nothing: cancelled never becomes completed.
    result = store.complete(job.id, "k", 1, "x")
    assert not result.applied and result.previous is JobStatus.CANCELLED
    assert not store.record_progress(job.id, 1, []).applied
    assert not store.fail(job.id, "late").applied
    final = store.get(job.id)
    assert final.status is JobStatus.CANCELLED and final.artifact_key is None and final.error is None


def test_finished_jobs_cannot_be_cancelled(store, owner):
    job, _ = store.create(owner, [70000], 1.0, no_enqueue)
    store.start(job.id)
    assert store.complete(job.id, "downloads/x.zip", 10, "abc").applied
    result = store.cancel(job.id)
    assert not result.applied and result.previous is JobStatus.COMPLETED


def test_unknown_jobs_report_no_previous_state(store):
    result = store.cancel(str(uuid.uuid4()))
    assert not result.applied and result.previous is None


def test_a_job_whose_heartbeat_is_stale_is_found_through_the_index(store, clock, redis, owner):
    job, _ = store.create(owner, [70000], 1.0, no_enqueue)
    assert store.lost(3.0) == []
    store.start(job.id)
    clock[0] += 2.0
    assert store.lost(3.0) == [] and not store.is_stale(store.get(job.id), 3.0)
    store.heartbeat(job.id)
    clock[0] += 2.9
    assert store.lost(3.0) == []
    clock[0] += 0.2
    assert store.lost(3.0) == [job.id] and store.is_stale(store.get(job.id), 3.0)
    assert 0 < redis.ttl(processing_index_key()) <= store.ttl_s
    store.complete(job.id, "downloads/x.zip", 10, "abc")
    assert redis.zcard(processing_index_key()) == 0  # any end leaves the index


def test_a_lost_job_is_requeued_with_its_progress_reset_then_failed_after_the_last_attempt(store, clock, owner):
    job, _ = store.create(owner, [70000, 70001], 1.0, no_enqueue)
    for attempt in (1, 2):
        assert store.start(job.id).applied
        store.record_progress(job.id, 1, [70001], attempt=attempt)
        clock[0] += 10
        requeued = store.requeue_or_fail(job.id, 3, "worker lost")
        assert requeued.status is JobStatus.QUEUED and requeued.attempt == attempt + 1
        assert requeued.processed_files == 0 and requeued.unavailable_file_ids == [] and requeued.progress == 0
        assert requeued.to_api()["attempt"] == attempt + 1
        assert store.lost(3.0) == []
    store.start(job.id)
    clock[0] += 10
    failed = store.requeue_or_fail(job.id, 3, "worker lost")
    assert failed.status is JobStatus.FAILED and failed.error == "worker lost (after 3 attempts)"
    assert store.requeue_or_fail(job.id, 3, "worker lost") is None  # terminal: nothing more happens


def test_a_job_is_requeued_once_however_many_sweepers_find_it(store, clock, owner):
    job, _ = store.create(owner, [70000], 1.0, no_enqueue)
    store.start(job.id)
    clock[0] += 10
    assert store.requeue_or_fail(job.id, 3, "lost", attempt=1).attempt == 2
    store.start(job.id)  # a worker took attempt 2 before the second sweeper, that read attempt 1, acted
    assert store.requeue_or_fail(job.id, 3, "lost", attempt=1) is None
    assert store.get(job.id).status is JobStatus.PROCESSING


def test_the_run_of_an_earlier_attempt_can_change_nothing(store, clock, owner):
    job, _ = store.create(owner, [70000], 1.0, no_enqueue)
    store.start(job.id)
    clock[0] += 10
    store.requeue_or_fail(job.id, 3, "lost")
    store.start(job.id)  # attempt 2 runs; the first run's worker was only slow, not dead
    assert not store.heartbeat(job.id, attempt=1).applied
    assert not store.record_progress(job.id, 1, [], attempt=1).applied
    assert not store.complete(job.id, "downloads/x.zip", 10, "abc", attempt=1).applied
    assert not store.fail(job.id, "late", attempt=1).applied
    assert store.complete(job.id, "downloads/x.zip", 10, "abc", attempt=2).applied


def test_an_index_entry_whose_record_expired_is_dropped(store, clock, redis, owner):
    job, _ = store.create(owner, [70000], 1.0, no_enqueue)
    store.start(job.id)
    redis.delete(job_key(job.id))
    clock[0] += 10
    assert store.lost(3.0) == [job.id]
    assert store.requeue_or_fail(job.id, 3, "lost") is None
    assert store.lost(3.0) == []


def test_a_failing_enqueue_stores_nothing(store, redis, owner):
    def broken(pipe, job_id):
        raise RuntimeError("queue unavailable")

    with pytest.raises(RuntimeError):
        store.create(owner, [70000], 1.0, broken, idempotency=("k1", "fp"))
    assert redis.zcard(owner_index_key(owner)) == 0
    assert store.create(owner, [70000], 1.0, no_enqueue, idempotency=("k1", "fp"))[1] is True


def test_listing_is_newest_first_and_drops_expired_records(store, clock, redis, owner):
    ids = []
    for _ in range(3):
        clock[0] += 1
        ids.append(store.create(owner, [70000], 1.0, no_enqueue)[0].id)
    redis.delete(job_key(ids[1]))  # as if its TTL had run out
    assert [j.id for j in store.list_for_owner(owner, limit=10)] == [ids[2], ids[0]]
    assert redis.zcard(owner_index_key(owner)) == 2
