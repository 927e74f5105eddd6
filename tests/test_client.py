"""dlkit.client, the Python client: against the real session stack through its entry (start, follow
with SSE or polling, download a verified zip, cancel, resume by id), its retry policy against scripted
answers (pure logic), and proof that it imports with nothing but httpx and the standard library."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tomllib
import uuid
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from dlkit import client as client_module
from dlkit.client import ApiError, ChecksumMismatch, DownloadClient, JobNotCompleted, Status

from .support import API_KEYS, available_ids, verify_zip


@pytest.mark.parametrize("sse", [True, False], ids=["sse", "polling"])
def test_start_wait_with_progress_and_download_a_verified_zip(stack, tmp_path, sse):
    ids = available_ids(4)
    with DownloadClient(stack.entry, API_KEYS["alice"], sse=sse) as client:
        job = client.start(ids)
        assert job.status == "queued" and job.total_files == 4
        seen: list[Status] = []
        final = client.wait(job, on_progress=seen.append)
        path = client.download(final, tmp_path / "files.zip")
    assert final.status == "completed" and final.job_id == job.job_id
    assert seen[-1] == final and [s.processed_files for s in seen] == sorted(s.processed_files for s in seen)
    assert len({s.processed_files for s in seen}) >= 2, "progress is reported as it moves"
    assert path.stat().st_size == final.artifact_size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == final.artifact_sha256
    verify_zip(path.read_bytes(), ids)
    assert not (tmp_path / "files.zip.part").exists()


def test_start_with_one_idempotency_key_is_one_job_and_resumes_by_id(stack, tmp_path):
    key = str(uuid.uuid4())
    with (
        DownloadClient(stack.entry, API_KEYS["alice"]) as first,
        DownloadClient(stack.entry, API_KEYS["alice"]) as again,
    ):
        job = first.start([70000], idempotency_key=key)
        assert again.start([70000], idempotency_key=key).job_id == job.job_id
        # Another process knows only the id: it follows the same job to its end and downloads it.
        final = again.wait(job.job_id)
        verify_zip(again.download(job.job_id, tmp_path / "a.zip").read_bytes(), [70000])
    assert final.job_id == job.job_id and final.status == "completed"


def test_cancel_a_running_job(slow, tmp_path):
    with DownloadClient(slow.stack.entry, API_KEYS["alice"]) as client:
        job = client.start(available_ids(6))
        running = next(s for s in client.iter_progress(job) if s.status == "processing")
        cancelled = client.cancel(running)
        final = client.wait(job)
        with pytest.raises(JobNotCompleted, match="cancelled"):
            client.download(job, tmp_path / "x.zip")
        with pytest.raises(ApiError) as refused:
            client.cancel(job.job_id + "0")
    assert cancelled.status == final.status == "cancelled" and final.processed_files < 6
    assert refused.value.status_code in (400, 404) and refused.value.problem["title"]
    assert not list(tmp_path.iterdir())


def test_a_failed_job_ends_the_wait(alice_client):
    final = alice_client.wait(alice_client.start([70001]))  # not available: the job fails
    assert final.status == "failed" and final.error


@pytest.fixture
def alice_client(stack):
    with DownloadClient(stack.entry, API_KEYS["alice"]) as client:
        yield client


# -- the retry policy, against scripted answers -----------------------------------------------


def scripted(answers: list) -> tuple[DownloadClient, list[httpx.Request], list[float]]:
    """A client whose requests get `answers` in turn (a response, or an exception to raise)."""
    requests: list[httpx.Request] = []
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = DownloadClient("http://api.test", "k", transport=httpx.MockTransport(handler), sleep=sleeps.append)
    return client, requests, sleeps


ACCEPTED = {"jobId": "j1", "status": "queued", "totalFileIds": 1}


def test_initiate_is_retried_under_one_idempotency_key_honouring_retry_after():
    client, requests, sleeps = scripted(
        [
            httpx.Response(503, headers={"Retry-After": "0.25"}, json={"title": "Unavailable"}),
            httpx.ConnectError("refused"),
            httpx.Response(429, headers={"Retry-After": "2"}, json={"title": "Too Many Requests"}),
            httpx.Response(202, json=ACCEPTED),
        ]
    )
    with client:
        assert client.start([70000]).job_id == "j1"
    keys = {r.headers["Idempotency-Key"] for r in requests}
    assert len(requests) == 4 and len(keys) == 1 and uuid.UUID(keys.pop())
    assert sleeps[0] == 0.25 and sleeps[2] == 2.0
    assert 0 <= sleeps[1] <= client.backoff_s * 2, "a network error backs off (jittered)"
    assert all(r.headers["Authorization"] == "Bearer k" for r in requests)


def test_a_4xx_is_not_retried_and_carries_the_problem():
    problem = {"title": "Invalid request", "status": 400, "detail": "file_ids: too short"}
    client, requests, sleeps = scripted([httpx.Response(400, json=problem)])
    with client, pytest.raises(ApiError) as error:
        client.start([])
    assert error.value.status_code == 400 and error.value.problem == problem
    assert len(requests) == 1 and sleeps == []


def test_5xx_past_every_retry_is_an_error():
    client, requests, sleeps = scripted([httpx.Response(502, text="<html>bad gateway</html>")] * 9)
    with client, pytest.raises(ApiError) as error:
        client.status("j1")
    assert error.value.status_code == 502 and len(requests) == client.max_retries + 1
    backoffs = [min(client.max_backoff_s, client.backoff_s * 2**n) for n in range(client.max_retries)]
    assert all(0 <= slept <= limit for slept, limit in zip(sleeps, backoffs, strict=True))


def test_a_download_whose_bytes_differ_is_refused_and_not_kept(tmp_path):
    good = b"the artifact"
    completed = {
        "jobId": "j1",
        "status": "completed",
        "totalFiles": 1,
        "processedFiles": 1,
        "artifact": {"size": len(good), "sha256": hashlib.sha256(good).hexdigest()},
    }
    client, requests, _ = scripted(
        [
            httpx.Response(200, json=completed),
            httpx.Response(302, headers={"Location": "http://s3.test/bucket/j1.zip?X-Amz-Signature=x"}),
            httpx.Response(200, content=b"the artefact"),  # same size, other bytes
        ]
    )
    with client, pytest.raises(ChecksumMismatch):
        client.download("j1", tmp_path / "j1.zip")
    assert list(tmp_path.iterdir()) == []
    assert "Authorization" not in requests[-1].headers, "the API key never goes to the storage"


def sse(*events: tuple[str, dict]) -> bytes:
    return "".join(f"id: {i}\nevent: status\ndata: {json.dumps(doc)}\n\n" for i, doc in events).encode()


class CutStream(httpx.SyncByteStream):
    """A response body that delivers `data`, then loses the connection."""

    def __init__(self, data: bytes):
        self.data = data

    def __iter__(self):
        yield self.data
        raise httpx.ReadError("connection reset")


def doc(status: str, processed: int) -> dict:
    return {"jobId": "j1", "status": status, "totalFiles": 2, "processedFiles": processed}


EVENT_STREAM = {"Content-Type": "text/event-stream"}


def test_a_lost_event_stream_is_resumed_with_last_event_id():
    client, requests, sleeps = scripted(
        [
            httpx.Response(
                200,
                headers=EVENT_STREAM,
                stream=CutStream(sse(("0-0", doc("queued", 0)), ("5-0", doc("processing", 1)))),
            ),
            httpx.ConnectError("refused"),
            httpx.Response(
                200, headers=EVENT_STREAM, content=sse(("6-0", doc("processing", 2)), ("7-0", doc("completed", 2)))
            ),
        ]
    )
    with client:
        seen = [(s.status, s.processed_files) for s in client.iter_progress("j1")]
    assert seen == [("queued", 0), ("processing", 1), ("processing", 2), ("completed", 2)]
    assert [r.headers.get("Last-Event-ID") for r in requests] == [None, "5-0", "5-0"]
    assert len(sleeps) == 2, "each reconnection backs off"


def test_without_an_event_stream_the_client_polls_at_the_pace_of_retry_after():
    client, requests, sleeps = scripted(
        [
            httpx.Response(200, headers={"Content-Type": "text/html"}, text="<html>a buffering proxy</html>"),
            httpx.Response(200, headers={"Retry-After": "0.1"}, json=doc("processing", 1)),
            httpx.Response(200, headers={"Retry-After": "0.1"}, json=doc("processing", 1)),
            httpx.Response(200, json=doc("completed", 2)),
        ]
    )
    with client:
        final = client.wait("j1")
    assert final.status == "completed" and sleeps == [0.1, 0.1]
    assert [r.url.path for r in requests] == ["/v1/download/events/j1"] + ["/v1/download/status/j1"] * 3


def test_events_are_parsed_as_the_sse_format_defines_them():
    stream = ["retry: 100", "", ": heartbeat", "", "id: 1-0", "event: status", 'data: {"a":', "data: 1}", ""]
    stream += ["event: other", "data: x", "", "id: 2-0", "event: status", "data: {}", ""]
    parsed = list(client_module._events(iter(stream)))
    assert parsed == [("1-0", '{"a":\n1}'), ("2-0", "{}")]
    assert json.loads(parsed[0][1]) == {"a": 1}


# -- usable without the rest of the kit ---------------------------------------------------------


def distribution_closure(name: str) -> set[str]:
    """The distribution and everything it requires (without extras), as installed here."""
    seen, todo = set(), [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def test_the_client_imports_with_only_httpx_and_the_standard_library(tmp_path):
    # A folder holding dlkit/__init__.py, dlkit/client.py and the files of httpx and what it requires;
    # Python started without site-packages (-S) and isolated (-I) sees nothing else.
    package = Path(client_module.__file__).parent
    (tmp_path / "dlkit").mkdir()
    for name in ("__init__.py", "client.py"):
        (tmp_path / "dlkit" / name).write_bytes((package / name).read_bytes())
    dists = distribution_closure("httpx")
    assert {"flask", "redis", "pydantic", "rich"}.isdisjoint(dists)
    for name in dists:
        for file in metadata.distribution(name).files or []:
            source = Path(file.locate())
            if file.parts[0].endswith((".dist-info", "..")) or not source.is_file() or file.suffix == ".pyc":
                continue
            target = tmp_path / file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import dlkit.client; "
        "print(sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names))"
    )
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    outside = set(json.loads(result.stdout.replace("'", '"')))
    assert "httpx" in outside and outside <= {"__main__", "dlkit", *(d.replace("-", "_") for d in dists)}, outside


def test_the_client_extra_is_httpx_alone():
    from dlkit.kit import ROOT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [Requirement(line).name for line in extras["client"]] == ["httpx"]
