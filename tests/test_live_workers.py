"""dlkit/workers.py against the real Valkey: a worker counts as live while its stamp is fresh, a stop takes
it out at once, a beat after the stop cannot bring it back, and the set expires with its last worker.
(A SIGKILLed worker on the real stack: tests/test_faults.py.)"""

from __future__ import annotations

import uuid

import pytest

from dlkit.workers import LiveWorkers, Presence

LOST_AFTER_S = 3.0


@pytest.fixture
def live(redis):
    now = [1_000_000.0]
    workers = LiveWorkers(redis, f"test-live-{uuid.uuid4().hex[:8]}", LOST_AFTER_S, clock=lambda: now[0])
    workers.now = now  # the test moves the clock
    yield workers
    redis.delete(workers.key)


def test_a_worker_is_live_until_its_stamp_is_older_than_lost_after(live):
    live.stamp("a")
    live.now[0] += 1
    live.stamp("b")
    assert live.count() == 2 and live.names() == {"a", "b"}
    live.now[0] += LOST_AFTER_S - 1  # a's stamp is exactly LOST_AFTER_S old: still live
    assert live.names() == {"a", "b"}
    live.now[0] += 0.5
    assert live.count() == 1 and live.names() == {"b"}
    live.stamp("b")  # a beat also drops the lost ones: the set holds the live workers only
    assert [name.decode() for name in live.redis.zrange(live.key, 0, -1)] == ["b"]


def test_the_set_expires_with_its_last_worker(live):
    live.stamp("a")
    assert 0 < live.redis.ttl(live.key) <= 2 * LOST_AFTER_S
    live.remove("a")
    assert live.count() == 0


def test_a_beat_after_leave_does_not_bring_a_stopped_worker_back(live):
    presence = Presence(live)
    presence.beat()  # not joined yet: nothing
    assert live.count() == 0
    presence.join("w1")
    live.now[0] += 1
    presence.beat()
    assert live.redis.zscore(live.key, "w1") == live.now[0]
    presence.leave()
    presence.beat()  # the sweeper thread's next pass, after the worker stopped
    assert live.count() == 0 and live.redis.zscore(live.key, "w1") is None
    presence.leave()  # twice is harmless (a teardown after a recovery)
