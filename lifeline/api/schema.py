"""The OpenAPI schema (``/openapi.json`` for viewers, not an open route; error bodies
documented as sent) and the query-parameter check of every route."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi

from lifeline.api.deps import Viewer

router = APIRouter(tags=["health"])
OPEN_PATHS = ("/healthz", "/readyz")  # probes may add parameters of their own: ignored


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, _: Viewer) -> dict[str, Any]:
    """The OpenAPI schema of this API (what ``schemathesis`` and clients read)."""
    schema: dict[str, Any] = request.app.openapi()
    return schema


def install_openapi(app: FastAPI) -> None:
    """Generate the schema once, documenting the error bodies the routes really send.

    Besides FastAPI's validation errors (a list of ``{loc, msg, type}``), a 422 from
    the routes' own checks carries a message or a list of reasons in ``detail``, so
    ``HTTPValidationError.detail`` is widened to say so.
    """
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            error = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
            if error is not None:
                error["properties"]["detail"] = {"anyOf": [
                    {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
                    {"type": "array", "items": {"type": "string"}},
                    {"type": "string"}]}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


def reject_unknown_query(request: Request) -> None:
    """422 on a query parameter the route does not declare (a misspelt filter,
    ``?stat=open``, must not silently return everything) or on a single-valued one given
    more than once (``?state=a&state=b`` would silently mean ``b``)."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if path is None or not request.query_params or path in OPEN_PATHS:
        return
    known: dict[tuple[str, str], dict[str, bool]] | None = getattr(
        request.app.state, "query_names", None)
    if known is None:
        known = {}
        for route_path, item in request.app.openapi().get("paths", {}).items():
            for method, op in item.items():
                known[(method.upper(), route_path)] = {
                    p["name"]: p.get("schema", {}).get("type") == "array"
                    for p in op.get("parameters", []) if p.get("in") == "query"}
        request.app.state.query_names = known
    allowed = known.get((request.method, path), {})
    problems = [f"unknown query parameter {name[:64]!r}"
                for name in sorted(set(request.query_params) - set(allowed))]
    problems += [f"query parameter {name!r} given {len(values)} times"
                 for name in sorted(set(request.query_params) & set(allowed))
                 if not allowed[name] and len(values := request.query_params.getlist(name)) > 1]
    if problems:
        raise HTTPException(422, problems)
