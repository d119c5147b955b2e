"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lifeline.api.deps import Ctx, Viewer
from lifeline.redaction import mask_urls

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is not ready"}})
def readyz(ctx: Ctx) -> JSONResponse:
    """Ready when every registered readiness check passes; with HA, the body also names
    this node's ``role`` (``leader`` or ``standby``) and its ``node`` id."""
    registered = ctx.ready_checks.items()
    checks: dict[str, Any] = {name: check() for name, check in registered}
    ready = all(ok for ok, _ in checks.values())
    details = {k: {"ok": ok, "detail": mask_urls(str(d))} for k, (ok, d) in checks.items()}
    body: dict[str, Any] = {"ready": ready, "checks": details}
    if ctx.ha is not None:
        body["role"] = "leader" if ctx.ha.is_leader() else "standby"
        body["node"] = ctx.ha.node_id
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", responses={
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
    401: {"description": "missing or invalid bearer token"}})
def metrics(ctx: Ctx, _: Viewer) -> Response:
    """Prometheus metrics of every component: the process-wide registry (ingest, process)
    and the app's (database state, rule evaluation, webhooks)."""
    body = generate_latest() + generate_latest(ctx.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
