"""Helpers the tests share: clients for the stack's users, a polling loop like a real client's, and
reading the stack's Prometheus metrics."""

from __future__ import annotations

import io
import time
import zipfile

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dlkit import files
from dlkit.kit.stack import Stack

API_KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789"}
TERMINAL = {"completed", "failed", "cancelled"}


def client_for(stack: Stack, user: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {API_KEYS[user]}"} if user else {}
    return httpx.Client(base_url=stack.entry, headers=headers, timeout=10)


def poll(client: httpx.Client, job_id: str, until=TERMINAL, timeout_s: float = 30.0) -> list[dict]:
    """Poll a job the way a client must (honouring Retry-After) until its status is in `until`
    (or `until(document)` is true). Returns every status document seen.

    Polling *is* the API's readiness signal.
    """
    done = until if callable(until) else (lambda doc: doc["status"] in until)
    seen = []
    deadline = time.monotonic() + timeout_s
    while True:
        r = client.get(f"/v1/download/status/{job_id}")
        assert r.status_code in (200, 410), r.text
        seen.append(r.json())
        if done(seen[-1]):
            return seen
        assert time.monotonic() < deadline, f"job {job_id} stuck at {seen[-1]}"
        time.sleep(float(r.headers["Retry-After"]))


def initiate(client: httpx.Client, file_ids: list[int], **kw) -> httpx.Response:
    r = client.post("/v1/download/initiate", json={"file_ids": file_ids}, **kw)
    assert r.status_code == 202, r.text
    return r


def available_ids(n: int, start: int = 70_000) -> list[int]:
    """n distinct available file ids (multiples of 7)."""
    first = start + (-start) % 7
    return list(range(first, first + 7 * n, 7))


# Metrics, as Prometheus scrapes them from the API and from each worker.


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one /metrics answer."""
    text = httpx.get(url, timeout=5).raise_for_status().text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def api_url(stack) -> str:
    return f"http://127.0.0.1:{stack.ports['api']}/metrics"


def worker_urls(stack) -> list[str]:
    count = sum(1 for name in stack.components if name.startswith("worker-"))
    return [f"http://127.0.0.1:{stack.ports[f'worker_metrics_{index}']}/metrics" for index in range(1, count + 1)]


def total(urls: list[str], name: str, **labels) -> float:
    return sum(value(scrape(url), name, **labels) for url in urls)


def finished(stack) -> float:
    return total([api_url(stack), *worker_urls(stack)], "dlkit_jobs_finished_total")


def wait_for_finished(stack, count: float, timeout_s: float = 30) -> None:
    """Until `count` jobs have finished in all: the metrics are the readiness signal here, so these
    tests do not spend the rate-limited API budget the other tests share on polling."""
    deadline = time.monotonic() + timeout_s
    while finished(stack) < count:
        assert time.monotonic() < deadline, f"only {finished(stack)} of {count} jobs finished"
        time.sleep(0.1)


def eventually(read, timeout_s: float = 30.0):
    """The first truthy value of `read()`, or its last value after `timeout_s`: for what reaches a file
    or a scrape asynchronously (spans from a batch processor, exemplar files written at most once a
    second, Prometheus on its scrape interval), where there is no event to wait on."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def verify_zip(content: bytes, ids: list[int]) -> None:
    """The zip holds exactly these files, each byte for byte as the catalogue generates it."""
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert sorted(archive.namelist()) == sorted(files.file_name(i) for i in ids)
        for file_id in ids:
            assert archive.read(files.file_name(file_id)) == files.file_bytes(file_id)
