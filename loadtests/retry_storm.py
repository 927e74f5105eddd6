"""Retry storms: what users who retry on errors do to the backend, with and without the fix.

Both kinds of user want one download at a time and report it as a `WANT` request (success if
they got it), so the demo can divide the backend work started (dlkit/accounting.py) by the
downloads users wanted: the work amplification.

- SyncRetryUser calls the legacy `start` and, like a user pressing reload, retries on any 5xx
  or client timeout, up to MAX_ATTEMPTS, after a short pause. Every attempt the app accepted
  keeps running after its 504: each retry adds a full download's work, delivered to nobody.
- PollingRetryUser uses the async API, and retries `initiate` the way a client must when it
  cannot know whether its request arrived: same Idempotency-Key, same body. To make that happen
  here, a share of first responses is treated as lost (LOST_RESPONSE_SHARE), as if the
  connection had dropped after the server accepted the job. The key makes the retry return the
  same job (`Idempotent-Replayed: true`), so the backend starts one job per download wanted.

    locust -f loadtests/retry_storm.py --host http://127.0.0.1:18080 --headless -u 20 -r 10 -t 30s --time-scale 0.02
"""

from __future__ import annotations

import random
import time
import uuid

from common import auth_headers, is_server_error, report, time_scale
from locust import HttpUser, task
from polling import THINK_S, initiate, poll_and_fetch, wanted_files
from sync import start

MAX_ATTEMPTS = 4
RETRY_PAUSE_S = (1, 5)  # real seconds a user waits before pressing reload
LOST_RESPONSE_SHARE = 0.5


def report_want(user: HttpUser, name: str, started: float, error: str | None) -> None:
    report(user, "WANT", name, started, error=error)


class SyncRetryUser(HttpUser):
    @task
    def download(self) -> None:
        started = time.monotonic()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            outcome = start(self, label="retry: start")
            if not is_server_error(outcome):
                break
            if attempt < MAX_ATTEMPTS:
                time.sleep(random.uniform(*RETRY_PAUSE_S) * time_scale(self.environment))
        error = None if outcome == "200" else f"gave up after {attempt} attempts: {outcome}"
        report_want(self, "sync download", started, error)


class PollingRetryUser(HttpUser):
    def wait_time(self) -> float:
        return random.uniform(*THINK_S) * time_scale(self.environment)

    @task
    def download(self) -> None:
        file_ids = wanted_files()
        started = time.monotonic()
        headers = {**auth_headers(self.environment), "Idempotency-Key": str(uuid.uuid4())}
        job_id = initiate(self, file_ids, headers, name="retry: initiate")
        if job_id is not None and random.random() < LOST_RESPONSE_SHARE:
            # The answer "was lost": send the same request again; the key must give the same job.
            replayed = initiate(self, file_ids, headers, name="retry: initiate (replay)")
            if replayed != job_id:
                report_want(self, "polling download", started, f"replay gave job {replayed}, not {job_id}")
                return
        if job_id is None:
            report_want(self, "polling download", started, "initiate failed")
            return
        report_want(self, "polling download", started, poll_and_fetch(self, job_id, file_ids, started))
