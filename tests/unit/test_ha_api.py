"""The API side of active/standby HA without a second server: /readyz names the role, the
schema documents the forwarding answers, the leader serves everything itself, what is
forwarded and which headers are dropped, and the URL a node advertises."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lifeline.api.forward import FORWARDED_BY, _without_hop_by_hop, forwarded
from lifeline.app import create_app
from lifeline.auth import new_token, token_digest
from lifeline.db import open_database
from lifeline.leadership import advertised_api_url, elector_from_settings
from lifeline.settings import Settings, load_settings

TOKEN = new_token()
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Ha:
    """A fixed :class:`~lifeline.api.deps.HaView`."""

    node: str
    leader: bool
    url: str | None = None

    @property
    def node_id(self) -> str:
        return self.node

    def is_leader(self) -> bool:
        return self.leader

    def leader_api_url(self) -> str | None:
        return self.url


def _settings(tmp_path: Path, api: dict[str, Any] | None = None, **extra: Any) -> Settings:
    return load_settings(None, run_dir=tmp_path, api={"tokens": [
        {"name": "ops", "role": "admin", "sha256": token_digest(TOKEN)}], **(api or {})},
        **extra)


def _client(tmp_path: Path, ha: Ha | None) -> TestClient:
    settings = _settings(tmp_path)
    engine = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return TestClient(create_app(settings, engine, {"db": lambda: (True, "ok")}, ha=ha))


@pytest.mark.parametrize(("leader", "role"), [(True, "leader"), (False, "standby")])
def test_readyz_names_role_and_node(tmp_path: Path, leader: bool, role: str) -> None:
    resp = _client(tmp_path, Ha("node-7", leader)).get("/readyz")
    assert resp.status_code == 200
    assert resp.json() == {"ready": True, "checks": {"db": {"ok": True, "detail": "ok"}},
                           "role": role, "node": "node-7"}


def test_readyz_without_ha_is_unchanged(tmp_path: Path) -> None:
    body = _client(tmp_path, None).get("/readyz").json()
    assert "role" not in body and "node" not in body


def test_the_schema_documents_forwarding_answers_on_forwarded_routes_only(
        tmp_path: Path) -> None:
    with_ha = _client(tmp_path, Ha("n", False)).get("/openapi.json", headers=AUTH).json()
    (tmp_path / "p").mkdir()
    plain = _client(tmp_path / "p", None).get("/openapi.json", headers=AUTH).json()
    writes = reads = 0
    for path, item in with_ha["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            if method.upper() in ("POST", "PUT", "PATCH", "DELETE") or (
                    method.upper(), path) == ("GET", "/api/v1/rules"):
                assert {"502", "503", "504"} <= codes, (method, path)
                writes += 1
            else:
                assert not {"502", "504"} & codes, (method, path)
                reads += 1
            before = set(plain["paths"][path][method]["responses"])
            assert before <= codes
    assert writes >= 10 and reads >= 10
    assert not any("504" in op["responses"] for item in plain["paths"].values()
                   for op in item.values())


def test_the_leader_serves_writes_itself_even_if_marked_forwarded(tmp_path: Path) -> None:
    """The header only stops a standby from forwarding again; the leader answers."""
    client = _client(tmp_path, Ha("a", True, url="http://127.0.0.1:9"))
    resp = client.post("/api/v1/silences", headers={**AUTH, FORWARDED_BY: "b"}, json={
        "matchers": {"device": "gas-1"}, "ends_at": "2030-01-01T00:00:00Z", "comment": "x"})
    assert resp.status_code == 201 and "x-lifeline-leader" not in resp.headers


def test_a_standby_with_an_unusable_leader_url_answers_503(tmp_path: Path) -> None:
    for url in ("ftp://host-a/", "http://[::1", "not a url"):
        client = _client(tmp_path, Ha("b", False, url=url))
        resp = client.post("/api/v1/silences", headers=AUTH, json={})
        assert resp.status_code == 503, (url, resp.text)
        assert resp.headers["retry-after"] == "1"
        assert resp.json()["detail"].startswith("no leader: ")


def test_a_leader_url_with_credentials_is_masked(tmp_path: Path) -> None:
    client = _client(tmp_path, Ha("b", False, url="ftp://user:pw-secret@host-a/"))
    resp = client.post("/api/v1/silences", headers=AUTH, json={})
    assert resp.status_code == 503 and "pw-secret" not in resp.text
    assert "pw-secret" not in resp.headers.get("x-lifeline-leader", "")


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("POST", "/api/v1/silences", True), ("PUT", "/api/x", True), ("PATCH", "/api/", True),
    ("DELETE", "/api/v1/devices/d", True), ("GET", "/api/v1/silences", False),
    ("HEAD", "/api/v1/silences", False), ("OPTIONS", "/api/v1/silences", False),
    ("POST", "/api", False), ("POST", "/apix", False), ("POST", "/metrics", False),
    ("POST", "/API/v1/silences", False), ("post", "/api/v1/silences", False),
    ("TRACE", "/api/v1/silences", False), ("POST", "//api/v1/silences", False),
    ("GET", "/api/v1/rules", True),  # the leader's running rule engine: not on a standby
    ("GET", "/api/v1/rules/", False), ("HEAD", "/api/v1/rules", False),
    ("GET", "/api/v1/rulesx", False)])
def test_what_is_forwarded(method: str, path: str, expected: bool) -> None:
    assert forwarded(method, path) is expected


def test_hop_by_hop_headers_are_dropped_also_those_connection_names() -> None:
    headers = [(b"connection", b"keep-alive, X-Hop ,x-other"), (b"x-hop", b"1"),
               (b"X-Other", b"2"), (b"keep-alive", b"timeout=5"), (b"te", b"trailers"),
               (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"),
               (b"proxy-authorization", b"Basic x"), (b"proxy-connection", b"keep-alive"),
               (b"authorization", b"Bearer t"), (b"x-kept", b"a"), (b"x-kept", b"b"),
               (b"host", b"h"), (b"content-length", b"3")]
    assert _without_hop_by_hop(headers, frozenset({b"host", b"content-length"})) == [
        (b"authorization", b"Bearer t"), (b"x-kept", b"a"), (b"x-kept", b"b")]


def test_the_advertised_url(tmp_path: Path) -> None:
    host = socket.gethostname()
    assert advertised_api_url(_settings(tmp_path)) == f"http://{host}:8080"
    assert advertised_api_url(_settings(tmp_path, api={"port": 9001})) == f"http://{host}:9001"
    assert advertised_api_url(_settings(tmp_path, api={"enabled": False})) is None
    given = _settings(tmp_path, api={"enabled": False},
                      ha={"advertise_url": "https://lifeline-a.city.example:8443/"})
    assert advertised_api_url(given) == "https://lifeline-a.city.example:8443"
    elector = elector_from_settings(given)
    try:
        assert elector.api_url == "https://lifeline-a.city.example:8443"
    finally:
        elector.stop()
