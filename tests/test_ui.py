"""The page at /ui/ in a real browser: Debian's chromium driven by Playwright, against the real
stack through the whole emulated chain (edge -> lb -> nginx -> gunicorn), API keys on.

Some cases need an API configured differently from the session's stacks (a low rate limit, no
API keys, the default presigned URL lifetime): for those the test serves `create_app()`
in-process on a free port, on the same Valkey, SeaweedFS and RQ workers, which is much cheaper
than a third stack.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright
from werkzeug.serving import make_server

from dlkit.settings import Settings

from .support import API_KEYS, available_ids, verify_zip

pytestmark = pytest.mark.stack

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A 2.4 s job, and a loaded 2-core machine: generous, since expect() returns as soon as it holds.
JOB_TIMEOUT_MS = 20_000
UUID_PATTERN = re.compile(r"^[0-9a-f-]{36}$")


def chromium() -> str:
    path = shutil.which("chromium")
    if path:
        return path
    if shutil.which("apt-get") and os.geteuid() == 0:
        pytest.fail("chromium is missing but can be installed here: run `make chromium` (`make test` does)")
    pytest.skip(
        "chromium is not installed and cannot be installed here (needs apt-get and root): browser tests skipped"
    )


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None)
    yield page
    context.close()
    assert not problems, problems


def open_ui(page: Page, base: str, key: str | None = API_KEYS["alice"]) -> None:
    page.goto(f"{base}/ui/")
    if key is None:
        return
    field = page.get_by_label("API key")
    expect(field).to_be_visible()  # the service wants a key: the page asks for one
    expect(page.locator("#message")).to_contain_text("needs an API key")
    field.fill(key)
    field.blur()  # the page saves the key and checks it
    expect(page.locator("#message")).not_to_contain_text("API key")


def start(page: Page, ids: list[int]) -> str:
    page.get_by_label("File IDs").fill(" ".join(map(str, ids)))
    page.get_by_role("button", name="Start download").click()
    job_id = page.locator("#job-id")
    expect(job_id).to_have_text(UUID_PATTERN)
    return job_id.inner_text()


def newest_job(client: httpx.Client) -> str:
    return client.get("/v1/downloads", params={"limit": 1}).json()["jobs"][0]["jobId"]


def test_page_is_served_with_a_strict_csp_cors_and_no_rate_limit(stack):
    with httpx.Client(base_url=stack.entry) as client:
        assert client.get("/ui").headers["Location"].endswith("/ui/")
        page = client.get("/ui/", headers={"Origin": "https://app.example"})
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        csp = page.headers["Content-Security-Policy"]
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ]:
            assert directive in csp
        assert "unsafe" not in csp
        assert page.headers["Access-Control-Allow-Origin"] in ("*", "https://app.example")
        assert "<script" in page.text and "<script>" not in page.text  # no inline script
        for asset, kind in [("app.js", "javascript"), ("style.css", "text/css")]:
            r = client.get(f"/ui/{asset}")
            assert r.status_code == 200 and kind in r.headers["Content-Type"]
            assert "RateLimit-Limit" not in r.headers  # static files are not counted
        assert client.get("/ui/nope.js").headers["Content-Type"] == "application/problem+json"


def api_calls(page: Page) -> list[str]:
    """The paths of the API calls the page makes from now on."""
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url.split("/v1/", 1)[1]) if "/v1/" in r.url else None)
    return calls


def test_progress_moves_and_a_reload_resumes_the_same_job(page, slow):
    open_ui(page, slow.stack.entry)
    calls = api_calls(page)
    job_id = start(page, available_ids(12))
    # Mid-job, all in one frame: some files done, most to go, an estimate shown (raf polling sees
    # every render of the 2.4 s job).
    page.wait_for_function(
        r"""() => {
        const text = (id) => document.getElementById(id).textContent;
        const value = document.querySelector('progress').value;
        return value > 0 && value < 50 && text('job-status') === 'Processing'
            && /^[1-5] of 12 files$/.test(text('counts')) && /^About .+ left\.$/.test(text('eta'));
    }""",
        timeout=JOB_TIMEOUT_MS,
    )

    page.reload()
    expect(page.locator("#job-id")).to_have_text(job_id)
    expect(page.locator("#job-status")).to_have_text("Completed", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("progress")).to_have_js_property("value", 100)
    expect(page.locator("#counts")).to_have_text("12 of 12 files")
    expect(page.get_by_role("link", name="Download")).to_be_visible()
    with slow.client() as alice:
        assert newest_job(alice) == job_id  # resumed, not started again
    # Progress came as server-sent events through the whole chain, one stream before the reload
    # and one after; nothing was polled.
    assert [c.split("/")[1] for c in calls if c.startswith("download/")] == ["initiate", "events", "events"]


def test_without_an_event_stream_the_page_polls(page, stack):
    page.route("**/v1/download/events/**", lambda route: route.abort())  # a proxy in the way breaks streams
    open_ui(page, stack.entry)
    calls = api_calls(page)
    start(page, available_ids(3))
    expect(page.locator("#job-status")).to_have_text("Completed", timeout=JOB_TIMEOUT_MS)
    assert sum(c.startswith("download/status/") for c in calls) >= 2


def test_a_reopened_tab_asks_for_the_key_then_shows_the_same_job(page, stack):
    open_ui(page, stack.entry)
    job_id = start(page, [70000])
    page.close()
    tab = page.context.new_page()  # same browser profile: localStorage kept, sessionStorage not
    open_ui(tab, stack.entry)
    expect(tab.locator("#job-id")).to_have_text(job_id)
    expect(tab.locator("#job-status")).to_have_text("Completed", timeout=JOB_TIMEOUT_MS)
    expect(tab.get_by_role("link", name="Download")).to_be_visible()


def test_cancel_shows_cancelled(page, slow):
    open_ui(page, slow.stack.entry)
    job_id = start(page, available_ids(12))
    expect(page.locator("#job-status")).to_have_text("Processing", timeout=JOB_TIMEOUT_MS)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-status")).to_have_text("Cancelled")
    expect(page.locator("#message")).to_have_text("The job was cancelled.")
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    with slow.client() as alice:
        assert alice.get(f"/v1/download/status/{job_id}").json()["status"] == "cancelled"


@pytest.fixture
def serve(make_app):
    """Serves create_app(settings + overrides) on a free port; yields its base URL."""
    servers = []

    def start_server(**overrides) -> str:
        server = make_server("127.0.0.1", 0, make_app(**overrides), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start_server
    for server in servers:
        server.shutdown()
        server.server_close()


# The session's stacks sign URLs for 1 s (50 s x 0.02) so that tests can watch one expire; SigV4
# counts from a whole second, so such a URL may have 0.1 s left when handed out: too little for a
# browser's round trip. The download tests serve the API with the default lifetime (6 s scaled).
LONG_URL_TTL = {"DOWNLOAD_URL_TTL_S": Settings.model_fields["DOWNLOAD_URL_TTL_S"].default}


def test_a_completed_job_downloads_a_zip_whose_bytes_verify(page, serve, alice):
    base = serve(TRUSTED_PROXY_HOPS=0, **LONG_URL_TTL)
    open_ui(page, base)
    job_id = start(page, [70000, 70001, 70007])  # 70001 is not available
    expect(page.locator("#job-status")).to_have_text("Completed", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#counts")).to_have_text("3 of 3 files, 1 not available")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download").click()
    assert download.value.suggested_filename == f"dlkit-{job_id}.zip"
    content = Path(download.value.path()).read_bytes()
    verify_zip(content, [70000, 70007])
    artifact = alice.get(f"/v1/download/status/{job_id}").json()["artifact"]
    assert hashlib.sha256(content).hexdigest() == artifact["sha256"]


def test_a_failed_job_says_why(page, stack):
    open_ui(page, stack.entry)
    start(page, [70001, 70002])  # none available: the worker fails the job
    expect(page.locator("#job-status")).to_have_text("Failed", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#message")).to_have_text("The job failed: none of the 2 requested files is available.")
    expect(page.get_by_role("link", name="Download")).to_be_hidden()


def test_a_job_the_service_no_longer_knows_is_reported_and_forgotten(page, stack):
    open_ui(page, stack.entry)
    gone = str(uuid.uuid4())
    page.evaluate("id => localStorage.setItem('dlkit.jobId', id)", gone)
    page.reload()
    expect(page.locator("#message")).to_contain_text(f"Job {gone} is not known to the service any more")
    expect(page.locator("#job")).to_be_hidden()
    assert page.evaluate("() => localStorage.getItem('dlkit.jobId')") is None


def test_a_rate_limited_start_is_explained_and_retried_later(page, serve):
    carol = f"key-carol-{uuid.uuid4().hex}"  # a user of her own: her budget is this test's alone
    base = serve(API_KEYS=f"{carol}:carol-{carol[-8:]}", RATE_LIMIT_MAX_REQUESTS=5, TRUSTED_PROXY_HOPS=0)
    open_ui(page, base, key=carol)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {carol}"}) as client:
        # Limits count per route: spend her initiate budget (empty bodies: counted, then refused).
        codes = [client.post("/v1/download/initiate", json={}).status_code for _ in range(6)]
    assert codes == [400] * 5 + [429]
    page.get_by_label("File IDs").fill("70000")
    page.get_by_role("button", name="Start download").click()
    message = page.locator("#message")
    expect(message).to_contain_text("Too many requests: the service asks to wait")
    expect(message).to_contain_text("(Retry-After); this page will try again then.")
    expect(page.locator("#job")).to_be_hidden()


def test_without_api_keys_download_is_a_plain_link_to_the_redirect(page, serve):
    base = serve(API_KEYS="", TRUSTED_PROXY_HOPS=0, **LONG_URL_TTL)
    open_ui(page, base, key=None)
    job_id = start(page, [70007])
    expect(page.get_by_label("API key")).to_be_hidden()  # nothing to ask
    link = page.get_by_role("link", name="Download")
    expect(link).to_have_attribute("href", f"{base}/v1/download/{job_id}", timeout=JOB_TIMEOUT_MS)
    with page.expect_download() as download:
        link.click()
    verify_zip(Path(download.value.path()).read_bytes(), [70007])
