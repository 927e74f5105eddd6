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


@bp.get("/health", summary="Readiness of Redis and S3", responses={200: Health, 503: Health, **problems(*ANY_ROUTE)})
def health():
    res = current_app.extensions["dlkit"]
    checks = {"storage": "ok", "redis": "ok"}
    try:
        res.redis.ping()
    except Exception as exc:  # any failure means "not ready"; the reason goes to the log
        current_app.logger.warning("health: redis check failed: %s", exc)
        checks["redis"] = "error"
    try:
        # A real write: a full store still answers HEAD bucket (dlkit/storage.py).
        probe_write(res.s3, res.settings.S3_BUCKET_NAME)
    except Exception as exc:
        current_app.logger.warning("health: storage check failed: %s", exc)
        checks["storage"] = "error"
    healthy = all(v == "ok" for v in checks.values())
    return {"status": "healthy" if healthy else "unhealthy", "checks": checks}, 200 if healthy else 503
