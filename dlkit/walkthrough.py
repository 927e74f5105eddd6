"""One download, end to end, the way a well-behaved client does it.

initiate -> poll status (honouring Retry-After) -> follow the download redirect to S3 ->
check every file in the zip byte for byte. Used by `dlkit demo` until the Locust demo lands,
and a readable example of a polling client.
"""

from __future__ import annotations

import io
import time
import zipfile

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import files

TERMINAL = {"completed", "failed", "cancelled"}


def retry_after_s(response: httpx.Response, default: float = 1.0) -> float:
    try:
        return float(response.headers.get("Retry-After", default))
    except ValueError:
        return default


def download_one(entry: str, file_ids: list[int], api_key: str | None = None, console: Console | None = None,
                 timeout_s: float = 600) -> dict:
    """Run one job through the API at `entry`; return a summary (raises on any contract breach)."""
    console = console or Console()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=entry, headers=headers, timeout=10) as client:
        started = time.monotonic()
        r = client.post("/v1/download/initiate", json={"file_ids": file_ids})
        r.raise_for_status()
        job_id = r.json()["jobId"]
        console.print(f"initiate -> [bold]{r.status_code}[/] job {job_id}, answered in {r.elapsed.total_seconds() * 1000:.0f} ms")

        polls = 0
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                      TimeElapsedColumn(), console=console, transient=False) as bar:
            task = bar.add_task("queued", total=100)
            while True:
                status = client.get(r.headers["Location"])
                polls += 1
                doc = status.json()
                bar.update(task, completed=doc.get("progress", 0), description=f"{doc['status']:<10}")
                if doc["status"] in TERMINAL:
                    break
                if time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"job {job_id} still {doc['status']} after {timeout_s} s")
                time.sleep(retry_after_s(status))
        if doc["status"] != "completed":
            raise RuntimeError(f"job {job_id} ended {doc['status']}: {doc.get('error')}")

        redirect = client.get(f"/v1/download/{job_id}")
        artifact = httpx.get(redirect.headers["Location"], timeout=60)
        artifact.raise_for_status()
        elapsed = time.monotonic() - started

    archive = zipfile.ZipFile(io.BytesIO(artifact.content))
    expected = [i for i in file_ids if files.is_available(i)]
    verified = sorted(archive.namelist()) == sorted(files.file_name(i) for i in expected) and all(
        archive.read(files.file_name(i)) == files.file_bytes(i) for i in expected
    )
    summary = {"jobId": job_id, "files": len(file_ids), "inZip": len(archive.namelist()),
               "unavailable": doc["unavailableFileIds"], "bytes": len(artifact.content), "polls": polls,
               "seconds": round(elapsed, 2), "verified": verified}
    table = Table(title="one download, end to end")
    table.add_column("field")
    table.add_column("value")
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)
    if not verified:
        raise RuntimeError("artifact does not hold exactly the available files' bytes")
    return summary
