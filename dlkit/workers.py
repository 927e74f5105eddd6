"""Which workers are alive, as the workers themselves tell it.

Every `python -m worker` stamps its name and the time into one sorted set per queue when it registers,
every quarter heartbeat from its sweeper thread (worker/sweeper.py), and takes its name out when it stops.
A worker whose stamp is older than JOB_STALE_AFTER_S is lost (killed, frozen or cut off) and no longer
counted: within two heartbeats, the bound lost jobs have too. RQ's own registry is no good for this: it
lists a killed worker until the worker's key expires (60 s past its last heartbeat at least, 8 min for an
idle one) and a maintenance pass takes it off the queue's set, so wherever nothing cleans up after a kill
(compose, ECS) /health would say healthy with no worker left.

The API reads the set: /health (degraded when none is live), the status note, the queue-wait estimate,
and the dlkit_workers gauge (a worker RQ still lists that stopped stamping is `lost`). Stamps are the
workers' clocks read by the API's, as the job heartbeats are: the hosts' clocks must agree to well under
a second (NTP does).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from redis import Redis
from redis.client import Pipeline


class LiveWorkers:
    """The sorted set of {worker name: last stamp} of one queue."""

    def __init__(self, redis: Redis, queue_name: str, lost_after_s: float, clock: Callable[[], float] = time.time):
        self.redis = redis
        self.key = f"dlkit:workers:{queue_name}"
        self.lost_after_s = lost_after_s
        self.clock = clock

    def since(self) -> float:
        """The oldest stamp of a live worker."""
        return self.clock() - self.lost_after_s

    def stamp(self, name: str) -> None:
        now = self.clock()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.key, {name: now})
            pipe.zremrangebyscore(self.key, "-inf", f"({now - self.lost_after_s}")  # the lost: nobody reads them
            # Every key expires: the set goes a while after its last worker.
            pipe.expire(self.key, max(1, math.ceil(2 * self.lost_after_s)))
            pipe.execute()

    def remove(self, name: str) -> None:
        self.redis.zrem(self.key, name)

    def count(self, redis: Redis | Pipeline | None = None) -> int:
        """The live workers; on `redis` when given (a pipeline: then queued, and read at its execute)."""
        # Not `redis or ...`: a pipeline with nothing queued yet is falsy (its len).
        return (self.redis if redis is None else redis).zcount(self.key, self.since(), "+inf")

    def names(self) -> set[str]:
        return {name.decode() for name in self.redis.zrangebyscore(self.key, self.since(), "+inf")}


class Presence:
    """One worker's stamp: `join` when it registers, `beat` from its sweeper thread, `leave` when it
    stops. A beat is a no-op unless joined, and the three hold one lock, so a beat racing a stop cannot
    stamp a stopped worker back in."""

    def __init__(self, live: LiveWorkers):
        self.live = live
        self.name: str | None = None
        self._lock = threading.Lock()

    def join(self, name: str) -> None:
        with self._lock:
            self.live.stamp(name)
            self.name = name

    def beat(self) -> None:
        with self._lock:
            if self.name is not None:
                self.live.stamp(self.name)

    def leave(self) -> None:
        with self._lock:
            name, self.name = self.name, None  # no more beats, even if Redis is away for the removal
            if name is not None:
                self.live.remove(name)
