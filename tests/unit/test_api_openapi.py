"""The OpenAPI document: every body and response declared; /docs and /redoc for viewers only."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from lifeline.app import create_app
from lifeline.auth import new_token, token_digest
from lifeline.db import open_database
from lifeline.settings import load_settings

BODY_METHODS = {"POST", "PUT", "PATCH"}


@pytest.fixture
def tokens() -> dict[str, str]:
    return {role: new_token() for role in ("viewer", "operator")}


@pytest.fixture
def client(tmp_path: Path, tokens: dict[str, str]) -> TestClient:
    settings = load_settings(None, run_dir=tmp_path, api={"tokens": [
        {"name": f"{r}-user", "role": r, "sha256": token_digest(t)} for r, t in tokens.items()]})
    engine = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return TestClient(create_app(settings, engine))


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, through included routers (FastAPI keeps them nested)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += _api_routes(route.original_router.routes)
    return found


def _takes_body(route: APIRoute) -> bool:
    """A declared body parameter, or an endpoint that reads the raw body itself."""
    if route.body_field is not None:
        return True
    source = inspect.getsource(route.endpoint)
    return "request.body()" in source or "request.stream()" in source


def test_every_body_and_every_response_is_documented(client: TestClient) -> None:
    app: Any = client.app
    schema = app.openapi()
    checked = 0
    routes = _api_routes(app.routes)
    assert len(routes) > 20
    for route in routes:
        if not route.include_in_schema:
            continue
        for method in route.methods:
            op = schema["paths"][route.path_format][method.lower()]
            where = f"{method} {route.path_format}"
            responses = op.get("responses", {})
            assert responses, f"{where}: no responses documented"
            for code, resp in responses.items():
                assert resp.get("description"), f"{where}: response {code} has no description"
            if method in BODY_METHODS and _takes_body(route):
                body = op.get("requestBody")
                assert body, f"{where}: takes a body but documents no requestBody"
                content = body.get("content", {})
                assert content and all("schema" in c for c in content.values()), where
                checked += 1
    assert checked >= 8  # the walk found the body routes (not an empty app)


def test_case_action_body_is_the_action_model(client: TestClient) -> None:
    app: Any = client.app
    op = app.openapi()["paths"]["/api/v1/cases/{case_id}/actions"]["post"]
    body_schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["required"] == ["action"]
    assert "handled" in body_schema["properties"]["action"]["enum"]
    assert op["requestBody"]["required"] is True


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_docs_need_a_viewer_token(client: TestClient, tokens: dict[str, str], path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = client.get(path, headers={"Authorization": f"Bearer {tokens['viewer']}"})
    assert ok.status_code == 200
    if path != "/openapi.json":
        # the page carries the schema itself: the browser cannot fetch it without the token
        assert ok.headers["content-type"].startswith("text/html")
        assert "/api/v1/cases/{case_id}/actions" in ok.text


def test_docs_page_cannot_be_broken_out_of_by_schema_text() -> None:
    from lifeline.api.schema import docs_html

    page = docs_html("redoc", {"info": {"title": "x", "description": "</script><b>x"}},
                     title="t")
    assert "</script><b>" not in page
    page = docs_html("swagger", {"info": {"title": "x", "description": "</script><b>x"}},
                     title="t")
    assert "</script><b>" not in page
