"""Roles on every route, enumerated from the app itself (a new route is covered by itself).

* every POST/PUT/PATCH/DELETE answers 401 without a token and 403 with a viewer token;
* every GET but ``/healthz`` and ``/readyz`` answers 401 without a token (and with a bad one);
* every route x role (anonymous, bad token, viewer, operator, admin) answers as the declared
  role matrix says: 401 without a valid token, 403 below the route's role, past the check
  at or above it; a write route missing from the matrix fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from lifeline.app import create_app
from lifeline.auth import new_token, token_digest
from lifeline.db import open_database
from lifeline.settings import load_settings

OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/readyz")}
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _app(tmp_path: Path, tokens: dict[str, str]) -> FastAPI:
    settings = load_settings(None, run_dir=tmp_path, api={"tokens": [
        {"name": f"{r}-user", "role": r, "sha256": token_digest(t)} for r, t in tokens.items()]})
    engine = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return create_app(settings, engine, {"db": lambda: (True, "ok")})


def _walk(entries: list[Any], prefix: str) -> Iterator[tuple[str, str]]:
    for entry in entries:
        if isinstance(entry, APIRoute):
            for method in sorted(entry.methods or ()):
                yield method, prefix + entry.path
        elif hasattr(entry, "original_router"):  # FastAPI >= 0.16x keeps included routers
            inner = prefix + entry.include_context.prefix
            yield from _walk(entry.original_router.routes, inner)


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, path parameters filled in (also routes left
    out of the OpenAPI schema)."""
    return [(m, re.sub(r"\{[^}]+\}", "1", p)) for m, p in _walk(app.router.routes, "")]


@pytest.fixture(scope="module")
def tokens() -> dict[str, str]:
    return {role: new_token() for role in ("viewer", "operator", "admin")}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tokens: dict[str, str]) -> FastAPI:
    return _app(tmp_path_factory.mktemp("roles"), tokens)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def test_route_enumeration_finds_every_router(app: FastAPI) -> None:
    found = routes(app)
    writes = [r for r in found if r[0] in WRITE_METHODS]
    assert len(writes) >= 12, writes
    prefixes = {p.split("/")[3] for _, p in writes if p.startswith("/api/v1/")}
    assert {"devices", "alerts", "silences", "cases", "deliveries", "rules", "dlq"} <= prefixes
    assert set(found) >= OPEN_ROUTES


def test_a_new_route_is_covered_automatically(app: FastAPI, client: TestClient,
                                              tokens: dict[str, str]) -> None:
    """A route added without a role dependency shows up in the enumeration and is caught."""
    probe = FastAPI()

    @probe.post("/api/v1/forgotten")
    def forgotten() -> dict[str, str]:
        return {"ok": "yes"}

    app.include_router(probe.router)
    try:
        assert ("POST", "/api/v1/forgotten") in routes(app)
        resp = client.post("/api/v1/forgotten",
                           headers={"Authorization": f"Bearer {tokens['viewer']}"})
        assert resp.status_code == 200  # so the role test below would fail on it
    finally:
        app.router.routes[:] = [r for r in app.router.routes
                                if getattr(r, "original_router", None) is not probe.router]
    assert ("POST", "/api/v1/forgotten") not in routes(app)


def _call(client: TestClient, method: str, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs: dict[str, object] = {"headers": headers}
    if method in WRITE_METHODS:
        kwargs["json"] = {}
    return client.request(method, path, **kwargs).status_code  # type: ignore[arg-type]


def test_every_write_route_refuses_viewers_and_anonymous(app: FastAPI, client: TestClient,
                                                        tokens: dict[str, str]) -> None:
    writes = [r for r in routes(app) if r[0] in WRITE_METHODS]
    assert writes
    got = {(m, p): (_call(client, m, p, None), _call(client, m, p, tokens["viewer"]),
                    _call(client, m, p, "ll_not-a-token"))
           for m, p in writes}
    wrong = {k: v for k, v in got.items() if v != (401, 403, 401)}
    assert wrong == {}, f"(anonymous, viewer, bad token) codes: {wrong}"


# The role matrix (README "Security"): the minimum role of every write route. Reads need
# viewer, but /healthz and /readyz are open. A write route missing here fails the test.
WRITE_ROLES: dict[tuple[str, str], str] = {
    # duty work: alerts, silences, cases (callbacks: operator token or dispatch signature)
    ("POST", "/api/v1/alerts/{alert_id}/ack"): "operator",
    ("POST", "/api/v1/alerts/{alert_id}/unack"): "operator",
    ("POST", "/api/v1/silences"): "operator",
    ("POST", "/api/v1/silences/{silence_id}/expire"): "operator",
    ("POST", "/api/v1/cases/{case_id}/register"): "operator",
    ("POST", "/api/v1/cases/{case_id}/cancel"): "operator",
    ("POST", "/api/v1/cases/{case_id}/actions"): "operator",
    # acknowledge from a notification: the signed link token, or an operator bearer token
    ("POST", "/api/v1/notify/ack"): "operator",
    # what the service is and what it accepts: registry, rules, data and delivery replays
    ("POST", "/api/v1/devices"): "admin",
    ("POST", "/api/v1/devices/import"): "admin",
    ("PATCH", "/api/v1/devices/{device_id}"): "admin",
    ("DELETE", "/api/v1/devices/{device_id}"): "admin",
    ("POST", "/api/v1/rules/reload"): "admin",
    ("POST", "/api/v1/dlq/replay"): "admin",
    ("POST", "/api/v1/deliveries/{row_id}/resend"): "admin",
}
RANK = {"viewer": 1, "operator": 2, "admin": 3}


def templates(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path template) the app serves."""
    return list(_walk(app.router.routes, ""))


def required_role(method: str, template: str) -> str | None:
    """The minimum role of a route by the matrix (None: open)."""
    if (method, template) in OPEN_ROUTES:
        return None
    if method in WRITE_METHODS:
        return WRITE_ROLES[(method, template)]
    return "viewer"


def test_the_role_matrix_names_every_write_route_and_no_other(app: FastAPI) -> None:
    writes = {r for r in templates(app) if r[0] in WRITE_METHODS}
    assert writes == set(WRITE_ROLES), (writes ^ set(WRITE_ROLES))


def test_every_route_times_every_role_follows_the_matrix(
        app: FastAPI, client: TestClient, tokens: dict[str, str]) -> None:
    wrong: dict[tuple[str, str, str], int] = {}
    for method, template in templates(app):
        path = re.sub(r"\{[^}]+\}", "1", template)
        need = required_role(method, template)
        for who in ("anonymous", "bad", *RANK):
            token = {"anonymous": None, "bad": "ll_not-a-token"}.get(who, tokens.get(who))
            code = _call(client, method, path, token)
            if need is None:
                ok = code not in (401, 403)
            elif who in ("anonymous", "bad"):
                ok = code == 401
            elif RANK[who] < RANK[need]:
                ok = code == 403
            else:  # past the role check; 503: no rule engine in this bare app
                ok = code not in (401, 403, 500, 502)
            if not ok:
                wrong[(method, template, who)] = code
    assert wrong == {}


def test_an_operator_cannot_change_what_the_service_accepts(
        client: TestClient, tokens: dict[str, str]) -> None:
    """The admin-only routes by name, so a loosened matrix shows up here too."""
    op = tokens["operator"]
    for method, path in [("POST", "/api/v1/devices"), ("POST", "/api/v1/devices/import"),
                         ("PATCH", "/api/v1/devices/x"), ("DELETE", "/api/v1/devices/x"),
                         ("POST", "/api/v1/rules/reload"), ("POST", "/api/v1/dlq/replay"),
                         ("POST", "/api/v1/deliveries/1/resend")]:
        assert _call(client, method, path, op) == 403, path
        assert _call(client, method, path, tokens["admin"]) not in (401, 403), path


def test_every_read_route_but_health_needs_a_token(app: FastAPI, client: TestClient,
                                                  tokens: dict[str, str]) -> None:
    reads = [r for r in routes(app) if r[0] == "GET"]
    closed = [r for r in reads if r not in OPEN_ROUTES]
    assert len(closed) >= 10
    got = {p: (_call(client, "GET", p, None), _call(client, "GET", p, "ll_not-a-token"))
           for _, p in closed}
    assert {p: c for p, c in got.items() if c != (401, 401)} == {}
    for _, path in OPEN_ROUTES:
        assert client.get(path).status_code == 200
    # the schema and the interactive docs are served, but not openly (issue 15: for viewers)
    assert client.get("/openapi.json").status_code == 401
    viewer = {"Authorization": f"Bearer {tokens['viewer']}"}
    assert client.get("/openapi.json", headers=viewer).json()["info"]["title"] == "citylifeline"
    for docs in ("/docs", "/redoc"):
        assert client.get(docs).status_code == 401
        assert client.get(docs, headers={"Authorization": "Bearer ll_not-a-token"}
                          ).status_code == 401
        assert client.get(docs, headers=viewer).status_code == 200
