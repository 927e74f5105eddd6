"""Root, health and the OpenAPI document: unauthenticated and not rate limited."""

from __future__ import annotations

from flask import current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag

from dlkit.storage import probe_write

from ..schemas import ANY_ROUTE, Health, ServiceIndex, problems

bp = APIBlueprint("service", __name__, abp_tags=[Tag(name="service")])


@bp.get("/", summary="Service name and links", responses={200: ServiceIndex, **problems(*ANY_ROUTE)})
def index():
    return {
        "service": "dlkit download service",
        "links": {"openapi": "/openapi.json", "docs": "/docs/swagger", "health": "/health", "jobs": "/v1/downloads"},
    }


@bp.get("/openapi.json", summary="OpenAPI document", doc_ui=False)
def openapi_document():
    return jsonify(current_app.api_doc)


@bp.get(
    "/health",
    summary="Readiness of Redis and S3, and whether any worker is live",
    responses={200: Health, 503: Health, **problems(*ANY_ROUTE)},
)
def health():
    """503 `unhealthy` when Redis or S3 cannot be reached (load balancers take the instance out); 200
    `degraded` when both can but no worker is live (dlkit/workers.py): the API serves, queued jobs wait."""
    res = current_app.extensions["dlkit"]
    checks = {"storage": "ok", "redis": "ok", "workers": "ok"}
    try:
        res.redis.ping()
        if res.live_workers.count() == 0:
            checks["workers"] = "none"
    except Exception as exc:  # any failure means "not ready"; the reason goes to the log
        current_app.logger.warning("health: redis check failed: %s", exc)
        checks["redis"] = checks["workers"] = "error"
    try:
        # A real write: a full store still answers HEAD bucket (dlkit/storage.py).
        probe_write(res.s3, res.settings.S3_BUCKET_NAME)
    except Exception as exc:
        current_app.logger.warning("health: storage check failed: %s", exc)
        checks["storage"] = "error"
    if "error" in (checks["redis"], checks["storage"]):
        return {"status": "unhealthy", "checks": checks}, 503
    return {"status": "healthy" if checks["workers"] == "ok" else "degraded", "checks": checks}, 200
