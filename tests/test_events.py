"""Server-sent events: the status document on every change, heartbeats in between, through nginx."""

from __future__ import annotations

import json

from httpx_sse import connect_sse

from .support import available_ids, initiate


def read_stream(client, job_id: str) -> tuple[list[dict], int]:
    """Every status event and the number of heartbeat comments, until the server ends the stream."""
    statuses, heartbeats = [], 0
    with connect_sse(client, "GET", f"/v1/download/events/{job_id}", timeout=30) as source:
        assert source.response.headers["Content-Type"].startswith("text/event-stream")
        for line in source.response.iter_lines():
            if line.startswith(": heartbeat"):
                heartbeats += 1
            elif line.startswith("data: "):
                statuses.append(json.loads(line[len("data: ") :]))
    return statuses, heartbeats


def test_events_follow_a_job_to_completion_with_heartbeats(slow):
    # A 2.4 s job against 0.3 s heartbeats (15 s x 0.02): the stream carries both.
    with slow.client() as alice:
        job_id = initiate(alice, available_ids(6)).json()["jobId"]
        statuses, heartbeats = read_stream(alice, job_id)
    assert statuses[-1]["status"] == "completed" and statuses[-1]["downloadUrl"]
    progress = [s["processedFiles"] for s in statuses]
    assert progress == sorted(progress) and progress[-1] == 6
    assert len({s["processedFiles"] for s in statuses}) >= 3, "each file's progress is announced"
    assert heartbeats >= 2


def test_events_end_at_once_for_a_finished_job(alice):
    job_id = initiate(alice, [70001]).json()["jobId"]
    statuses, _ = read_stream(alice, job_id)  # ends when the job does
    assert statuses[-1]["status"] == "failed"
    again, heartbeats = read_stream(alice, job_id)
    assert [s["status"] for s in again] == ["failed"] and heartbeats == 0


def test_events_of_someone_elses_job_are_not_found(alice, bob):
    job_id = initiate(alice, [70000]).json()["jobId"]
    assert bob.get(f"/v1/download/events/{job_id}").status_code == 404
