"""Size limits on API request bodies (413 naming the setting), unknown query parameters
(422) and the documented error bodies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lifeline.app import create_app
from lifeline.auth import new_token, token_digest
from lifeline.db import open_database
from lifeline.errors import ConfigError
from lifeline.settings import load_settings

TOKEN = new_token()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_LIMIT = 2048
IMPORT_LIMIT = 4096


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = load_settings(None, run_dir=tmp_path, api={
        "max_body_bytes": BODY_LIMIT, "max_import_bytes": IMPORT_LIMIT,
        "tokens": [{"name": "ops", "role": "admin", "sha256": token_digest(TOKEN)}]})
    engine = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return TestClient(create_app(settings, engine, {}), raise_server_exceptions=False)


def silence(size: int) -> bytes:
    """A JSON silence body of exactly ``size`` bytes."""
    head = b'{"matchers": {"device": "gas-1"}, "ends_at": "2030-01-01T00:00:00Z", "comment": "'
    tail = b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_body_at_the_limit_is_read_and_over_it_refused(client: TestClient) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    at = client.post("/api/v1/silences", content=silence(BODY_LIMIT), headers=headers)
    assert at.status_code == 422  # read and validated: the comment is over 1000 chars
    assert "comment" in at.text
    over = client.post("/api/v1/silences", content=silence(BODY_LIMIT + 1), headers=headers)
    assert over.status_code == 413
    assert over.json() == {"detail": f"request body larger than {BODY_LIMIT} bytes "
                                     "(api.max_body_bytes)"}
    small = client.post("/api/v1/silences", content=silence(300), headers=headers)
    assert small.status_code == 201


def test_a_chunked_body_is_counted_as_it_arrives(client: TestClient) -> None:
    def chunks(total: int) -> Iterator[bytes]:
        body = silence(total)
        for i in range(0, len(body), 500):
            yield body[i:i + 500]

    headers = {**AUTH, "Content-Type": "application/json"}
    over = client.post("/api/v1/silences", content=chunks(BODY_LIMIT + 1), headers=headers)
    assert over.status_code == 413
    assert "api.max_body_bytes" in over.json()["detail"]
    ok = client.post("/api/v1/silences", content=chunks(300), headers=headers)
    assert ok.status_code == 201


def test_the_import_route_has_its_own_limit(client: TestClient) -> None:
    header = b"id,type\n"
    row = b"gas-0001,gas_alarm\n"
    body = header + row * ((IMPORT_LIMIT - len(header)) // len(row))
    body += b"\n" * (IMPORT_LIMIT - len(body))
    assert len(body) == IMPORT_LIMIT > BODY_LIMIT
    headers = {**AUTH, "Content-Type": "text/csv"}
    at = client.post("/api/v1/devices/import", content=body, headers=headers)
    assert at.status_code == 422 and "duplicate id" in at.text  # read and validated
    over = client.post("/api/v1/devices/import", content=body + b"\n", headers=headers)
    assert over.status_code == 413
    assert "api.max_import_bytes" in over.json()["detail"]


def test_oversized_body_is_refused_before_authentication(client: TestClient) -> None:
    resp = client.post("/api/v1/silences", content=b"x" * (BODY_LIMIT + 1))
    assert resp.status_code == 413


def test_unknown_query_parameters_are_refused(client: TestClient) -> None:
    ok = client.get("/api/v1/alerts", params={"state": "firing"}, headers=AUTH)
    assert ok.status_code == 200
    typo = client.get("/api/v1/alerts", params={"stat": "firing"}, headers=AUTH)
    assert typo.status_code == 422
    assert typo.json() == {"detail": ["unknown query parameter 'stat'"]}
    assert client.get("/healthz?probe=lb").status_code == 200  # probes are left alone
    twice = client.get("/api/v1/alerts?state=firing&state=resolved", headers=AUTH)
    assert twice.status_code == 422
    assert twice.json() == {"detail": ["query parameter 'state' given 2 times"]}


def test_body_limit_settings_are_bounded() -> None:
    with pytest.raises(ConfigError, match="max_body_bytes"):
        load_settings(None, api={"max_body_bytes": 10})
    with pytest.raises(ConfigError, match="max_import_bytes"):
        load_settings(None, api={"max_import_bytes": 2**40})


def test_documented_error_body_covers_the_routes_own_messages(client: TestClient) -> None:
    schema = client.get("/openapi.json", headers=AUTH).json()
    detail = schema["components"]["schemas"]["HTTPValidationError"]["properties"]["detail"]
    assert {"type": "string"} in detail["anyOf"]
    ack = schema["paths"]["/api/v1/alerts/{alert_id}/ack"]["post"]["responses"]
    assert {"401", "403", "404", "413", "422"} <= set(ack)


def test_callback_body_limit_boundary() -> None:
    from lifeline.api.cases import MAX_CALLBACK_BYTES

    head, tail = b'{"action": "accept", "note": "', b'"}'
    at = head + b" " * (MAX_CALLBACK_BYTES - len(head) - len(tail)) + tail
    assert len(at) == MAX_CALLBACK_BYTES
    headers = {**AUTH, "Content-Type": "application/json"}
    # this fixture's app-wide limit (2 KiB) is lower than the callback's: an app with 1 MiB
    big = TestClient(_app_with_body_limit(1024 * 1024), raise_server_exceptions=False)
    resp = big.post("/api/v1/cases/1/actions", content=at, headers=headers)
    assert resp.status_code == 422  # read and validated: the note is over 2000 chars
    over = big.post("/api/v1/cases/1/actions", content=at + b" ", headers=headers)
    assert over.status_code == 413
    assert over.json()["detail"] == f"callback body larger than {MAX_CALLBACK_BYTES} bytes"


def _app_with_body_limit(limit: int) -> FastAPI:
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    settings = load_settings(None, run_dir=tmp, api={"max_body_bytes": limit, "tokens": [
        {"name": "ops", "role": "operator", "sha256": token_digest(TOKEN)}]})
    return create_app(settings, open_database(f"sqlite:///{tmp / 'db.sqlite'}"), {})


def test_hostile_auth_headers_are_401_not_500(tmp_path: Path) -> None:
    """Found while reviewing the callback path: a non-ASCII signature header made
    ``hmac.compare_digest`` raise TypeError (a 500)."""
    import time

    settings = load_settings(None, run_dir=tmp_path, webhook={
        "url": "http://127.0.0.1:9/hook", "secret": "0123456789abcdef0123"})
    app = create_app(settings, open_database(f"sqlite:///{tmp_path / 'cb.sqlite'}"), {})
    client = TestClient(app, raise_server_exceptions=False)
    ts = str(int(time.time()))
    for sig in ("sha256=\xe9".encode("latin-1"), b"sha256=" + b"\xff" * 64, b"", b"x" * 4000):
        resp = client.post("/api/v1/cases/1/actions", content=b'{"action": "accept"}',
                           headers={"X-Lifeline-Timestamp": ts, "X-Lifeline-Signature": sig})
        assert resp.status_code == 401, (sig[:20], resp.text)
    for bad_ts in (b"\xb2", b"\xb9\xb2\xb3", b"-1", b"1e9", b"9" * 40):  # \xb2 is "²": isdigit()
        resp = client.post("/api/v1/cases/1/actions", content=b'{"action": "accept"}',
                           headers={"X-Lifeline-Timestamp": bad_ts, "X-Lifeline-Signature": b"x"})
        assert resp.status_code == 401, (bad_ts, resp.text)
    for token in ("\xe9t\xe9".encode("latin-1"), b"\x7f" * 10, b"x" * 8000):
        resp = client.get("/api/v1/alerts", headers={"Authorization": b"Bearer " + token})
        assert resp.status_code == 401
        resp = client.post("/api/v1/cases/1/actions", content=b"{}",
                           headers={"Authorization": b"Bearer " + token})
        assert resp.status_code == 401
