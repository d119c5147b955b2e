"""API assembly: open health routes, bearer tokens hashed at rest, roles."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lifeline.app import create_app
from lifeline.auth import Role, TokenStore, new_token, token_digest
from lifeline.db import open_database
from lifeline.settings import ApiToken, load_settings


@pytest.fixture
def tokens() -> dict[str, str]:
    return {role: new_token() for role in ("viewer", "operator", "admin")}


@pytest.fixture
def client(tmp_path: Path, tokens: dict[str, str]) -> TestClient:
    settings = load_settings(None, run_dir=tmp_path, api={"tokens": [
        {"name": f"{r}-user", "role": r, "sha256": token_digest(t)} for r, t in tokens.items()]})
    engine = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    app = create_app(settings, engine, {"db": lambda: (True, "ok"), "x": lambda: (False, "down")})
    return TestClient(app)


def test_health_is_open_and_readiness_reports_each_check(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["checks"]["x"] == {"ok": False, "detail": "down"}


def test_metrics_need_a_valid_token(client: TestClient, tokens: dict[str, str]) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": f"Bearer {tokens['viewer']}"})
    assert ok.status_code == 200 and b"python_info" in ok.content


def test_token_store_roles_and_hashing() -> None:
    token = new_token()
    store = TokenStore([ApiToken(name="ops", role="operator", sha256=token_digest(token))])
    principal = store.authenticate(token)
    assert principal is not None and principal.role is Role.OPERATOR
    assert store.authenticate(token_digest(token)) is None  # the digest itself is no token
    assert store.authenticate("") is None
    with pytest.raises(ValueError, match="sha256"):
        ApiToken(name="x", role="viewer", sha256="not-a-digest")
