"""The OpenAPI schema (``/openapi.json``, ``/docs`` and ``/redoc`` for viewers, not open
routes; error bodies documented as sent) and the query-parameter check of every route."""

from __future__ import annotations

from html import escape
from typing import Any, Literal

import orjson
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

from lifeline.api.deps import Ctx, Viewer

router = APIRouter(tags=["health"])
OPEN_PATHS = ("/healthz", "/readyz")  # probes may add parameters of their own: ignored


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, _: Viewer) -> dict[str, Any]:
    """The OpenAPI schema of this API (what ``schemathesis`` and clients read)."""
    schema: dict[str, Any] = request.app.openapi()
    return schema


# The pages carry the schema itself: the browser that opens them with a bearer token
# (a header, e.g. from a proxy or an extension) could not fetch /openapi.json without it.
SWAGGER_JS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
SWAGGER_CSS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"
REDOC_JS = "https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"


def docs_html(kind: Literal["swagger", "redoc"], schema: dict[str, Any], *, title: str) -> str:
    """An interactive docs page (Swagger UI or ReDoc) with ``schema`` inlined."""
    # JSON in a <script>: "<" escaped, so no text in the schema can close the element.
    spec = orjson.dumps(schema).decode().replace("<", "\\u003c")
    head = f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
    if kind == "swagger":
        return (f"{head}<link rel=\"stylesheet\" href=\"{SWAGGER_CSS}\"></head><body>"
                f"<div id=\"swagger-ui\"></div><script src=\"{SWAGGER_JS}\"></script>"
                f"<script>SwaggerUIBundle({{spec: {spec}, dom_id: \"#swagger-ui\", "
                f"deepLinking: true}});</script></body></html>")
    return (f"{head}</head><body><div id=\"redoc\"></div><script src=\"{REDOC_JS}\"></script>"
            f"<script>Redoc.init({spec}, {{}}, document.getElementById(\"redoc\"));</script>"
            f"</body></html>")


@router.get("/docs", include_in_schema=False)
def swagger_docs(request: Request, _: Viewer) -> HTMLResponse:
    """Swagger UI of this API (viewer token)."""
    return HTMLResponse(docs_html("swagger", request.app.openapi(),
                                  title=f"{request.app.title} API"))


@router.get("/redoc", include_in_schema=False)
def redoc_docs(request: Request, _: Viewer) -> HTMLResponse:
    """ReDoc of this API (viewer token)."""
    return HTMLResponse(docs_html("redoc", request.app.openapi(),
                                  title=f"{request.app.title} API"))


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


def reject_unknown_query(request: Request, ctx: Ctx) -> None:
    """422 on a query parameter the route does not declare (a misspelt filter,
    ``?stat=open``, must not silently return everything) or on a single-valued one given
    more than once (``?state=a&state=b`` would silently mean ``b``)."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if path is None or not request.query_params or path in OPEN_PATHS:
        return
    known = ctx.caches.query_names
    if known is None:
        known = {}
        for route_path, item in request.app.openapi().get("paths", {}).items():
            for method, op in item.items():
                known[(method.upper(), route_path)] = {
                    p["name"]: p.get("schema", {}).get("type") == "array"
                    for p in op.get("parameters", []) if p.get("in") == "query"}
        ctx.caches.query_names = known
    allowed = known.get((request.method, path), {})
    problems = [f"unknown query parameter {name[:64]!r}"
                for name in sorted(set(request.query_params) - set(allowed))]
    problems += [f"query parameter {name!r} given {len(values)} times"
                 for name in sorted(set(request.query_params) & set(allowed))
                 if not allowed[name] and len(values := request.query_params.getlist(name)) > 1]
    if problems:
        raise HTTPException(422, problems)
