"""The original service's calls: `check`, and `start`, the synchronous download.

`start` holds the connection for the whole simulated delay. It is kept on purpose: it is the
problem this kit reproduces. When REQUEST_TIMEOUT_MS passes first it answers 504, and the
work goes on in the background for nobody, exactly like the real thing.
"""

from __future__ import annotations

import threading
import time

from flask import current_app
from flask_openapi3 import APIBlueprint, Tag

from dlkit import files

from ..auth import current_owner
from ..problems import Problem
from ..schemas import CheckResponse, FileRequest, StartResponse
from ..schemas import Problem as ProblemModel

bp = APIBlueprint("legacy", __name__, url_prefix="/v1/download", abp_tags=[Tag(name="legacy (synchronous)")])


@bp.post("/check", summary="Is a file available?", responses={200: CheckResponse, 400: ProblemModel})
def check(body: FileRequest):
    current_owner()
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
    responses={200: StartResponse, 400: ProblemModel, 404: ProblemModel, 504: ProblemModel},
)
def start(body: FileRequest):
    current_owner()
    settings = current_app.extensions["dlkit"].settings
    delay_s = files.draw_delay_s(settings)
    started = time.monotonic()
    done = threading.Event()

    def work() -> None:
        # The simulated fetch: it runs to the end whether or not anyone is still waiting.
        time.sleep(delay_s)
        if files.is_available(body.file_id):
            files.file_bytes(body.file_id)
        done.set()

    threading.Thread(target=work, name=f"start-{body.file_id}", daemon=True).start()
    if not done.wait(timeout=settings.request_timeout_s):
        raise Problem(504, "Gateway Timeout",
                      f"The download did not finish within REQUEST_TIMEOUT_MS ({settings.REQUEST_TIMEOUT_MS} ms,"
                      f" scaled x{settings.TIME_SCALE}); use POST /v1/download/initiate for long downloads.",
                      slug="request-timeout")
    if not files.is_available(body.file_id):
        raise Problem(404, "File not available", f"File {body.file_id} is not available.", slug="file-not-available")
    return {
        "file_id": body.file_id,
        "status": "completed",
        "size": files.file_size(body.file_id),
        "processingTimeMs": round((time.monotonic() - started) * 1000),
    }
