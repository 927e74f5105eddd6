"""The original service's calls: `check`, and `start`, the synchronous download.

`start` holds the connection for the whole simulated delay. It is kept on purpose: it is the
problem this kit reproduces. When REQUEST_TIMEOUT_MS passes first it answers 504, and the
work goes on in the background for nobody, exactly like the real thing. dlkit/accounting.py
counts it: every handler started and finished, and the work finished after its client got the 504.
"""

from __future__ import annotations

import threading
import time

from flask import current_app
from flask_openapi3 import APIBlueprint, Tag

from dlkit import accounting, files

from ..auth import authenticate
from ..problems import Problem
from ..schemas import WITH_BODY, CheckResponse, FileRequest, StartResponse, problems

bp = APIBlueprint(
    "legacy",
    __name__,
    url_prefix="/v1/download",
    abp_tags=[Tag(name="legacy (synchronous)")],
    abp_security=[{"apiKey": []}],
)
bp.before_request(authenticate)


@bp.post("/check", summary="Is a file available?", responses={200: CheckResponse, **problems(*WITH_BODY)})
def check(body: FileRequest):
    available = files.is_available(body.file_id)
    return {
        "file_id": body.file_id,
        "available": available,
        "s3Key": files.object_key(body.file_id) if available else None,
        "size": files.file_size(body.file_id) if available else None,
    }


@bp.post(
    "/start",
    summary="Download one file synchronously (the legacy call that proxies cut)",
    # 504: the app's own REQUEST_TIMEOUT_MS (or a proxy's) cut the call; 524: the CDN edge's.
    responses={200: StartResponse, **problems(*WITH_BODY, 404, 504, 524)},
)
def start(body: FileRequest):
    res = current_app.extensions["dlkit"]
    settings = res.settings
    redis = res.redis  # thread-safe: the work thread below counts with it after the request is over
    delay_s = files.draw_delay_s(settings)
    started = time.monotonic()
    # One decision under one lock: either the work finished in time (the client gets 200/404), or
    # the handler gave up first (the client gets 504 and the work is wasted). Without the lock, work
    # ending just as the timeout fires could be neither, or both.
    lock = threading.Lock()
    outcome: dict[str, bool] = {"finished": False, "gave_up": False}
    finished = threading.Event()

    def work() -> None:
        # The simulated fetch: it runs to the end whether or not anyone is still waiting.
        time.sleep(delay_s)
        if files.is_available(body.file_id):
            files.file_bytes(body.file_id)
        with lock:
            outcome["finished"] = True
            wasted = outcome["gave_up"]
        finished.set()
        accounting.sync_finished(redis, delay_s, client_got_error=wasted)

    accounting.sync_started(redis)
    threading.Thread(target=work, name=f"start-{body.file_id}", daemon=True).start()
    finished.wait(timeout=settings.request_timeout_s)
    with lock:
        outcome["gave_up"] = not outcome["finished"]
    if outcome["gave_up"]:
        raise Problem(
            504,
            "Gateway Timeout",
            f"The download did not finish within REQUEST_TIMEOUT_MS ({settings.REQUEST_TIMEOUT_MS} ms,"
            f" scaled x{settings.TIME_SCALE}); use POST /v1/download/initiate for long downloads.",
            slug="request-timeout",
        )
    if not files.is_available(body.file_id):
        raise Problem(404, "File not available", f"File {body.file_id} is not available.", slug="file-not-available")
    return {
        "file_id": body.file_id,
        "status": "completed",
        "size": files.file_size(body.file_id),
        "processingTimeMs": round((time.monotonic() - started) * 1000),
    }
