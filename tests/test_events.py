"""Server-sent events: the status document on every change, heartbeats in between, through nginx;
event ids that let a client resume with Last-Event-ID without missing or repeating a change."""

from __future__ import annotations

import json

from httpx_sse import connect_sse

from dlkit.jobs import event_log_key

from .support import TERMINAL, available_ids, initiate, poll


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


def read_events(client, job_id: str, last_event_id: str | None = None, until=None) -> list[tuple[str, dict]]:
    """(id, status document) of each event, until the server ends the stream or `until(events)` holds
    (then the client hangs up, mid-job)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events = []
    with connect_sse(client, "GET", f"/v1/download/events/{job_id}", headers=headers, timeout=30) as source:
        for event in source.iter_sse():
            if not event.data:
                continue  # the `retry:` field alone (httpx-sse yields it; EventSource dispatches nothing)
            assert event.event == "status"
            events.append((event.id, event.json()))
            if until is not None and until(events):
                break
    return events


def logged_changes(redis, job_id: str) -> list[tuple[str, str, int]]:
    """(id, status, processed files) of each change in the job's event log, as Redis holds it."""
    return [
        (entry_id.decode(), fields[b"status"].decode(), int(fields[b"processedFiles"]))
        for entry_id, fields in redis.xrange(event_log_key(job_id))
    ]


def test_a_client_reconnecting_with_last_event_id_sees_every_change_once(slow):
    # 6 files in 2.4 s: hang up after the first file, come back two files later.
    with slow.client() as alice:
        job_id = initiate(alice, available_ids(6)).json()["jobId"]
        first = read_events(alice, job_id, until=lambda events: events[-1][1]["processedFiles"] >= 1)
        assert first[-1][1]["status"] == "processing", "hung up mid-job"
        away_at = first[-1][1]["processedFiles"]
        poll(alice, job_id, until=lambda doc: doc["processedFiles"] >= away_at + 2 or doc["status"] in TERMINAL)
        rest = read_events(alice, job_id, last_event_id=first[-1][0])
        log = logged_changes(slow.redis, job_id)
        # Resuming after the final event: 204, which tells EventSource to stop reconnecting.
        after_end = alice.get(f"/v1/download/events/{job_id}", headers={"Last-Event-ID": rest[-1][0]})
    assert after_end.status_code == 204
    seen = [(event_id, doc["status"], doc["processedFiles"]) for event_id, doc in first + rest]
    assert seen[-1][1] == "completed" and seen[-1][2] == 6
    assert len(rest) >= 3, "the changes made while away are replayed"
    # The first event is the state at connect time (`0-0`: queued, nothing logged yet); from there on,
    # every logged change exactly once, in order, with its own id.
    if seen[0][0] == "0-0":
        assert seen[0][1:] == ("queued", 0)
        seen = seen[1:]
    assert seen == log[[entry[0] for entry in log].index(seen[0][0]) :]
    assert [(status, n) for _, status, n in log] == [("processing", n) for n in range(7)] + [("completed", 6)]


def test_a_last_event_id_not_of_this_job_starts_from_the_current_status(alice):
    job_id = initiate(alice, [70001]).json()["jobId"]
    final = read_events(alice, job_id)[-1]
    for foreign in ["not-an-id", "1.5", ""]:
        assert read_events(alice, job_id, last_event_id=foreign) == [final]


def test_each_event_carries_the_unavailable_ids_as_they_were_then(slow):
    # The log keeps a count per change, not the list: each event's list is the record's, cut to it.
    ids = [70000, 70001, 70007, 70002, 70014]
    with slow.client() as alice:
        job_id = initiate(alice, ids).json()["jobId"]
        events = read_events(alice, job_id, last_event_id="0-0")  # every change, from the first
    assert [doc["processedFiles"] for _, doc in events] == [0, 1, 2, 3, 4, 5, 5]
    for _, doc in events:
        assert doc["unavailableFileIds"] == [i for i in ids[: doc["processedFiles"]] if i % 7], doc
