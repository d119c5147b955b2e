"""Signed dispatch callbacks on a real database (SQLite file and PostgreSQL): exactly one
credential, signatures bound to method, path, idempotency key and timestamp, replays
without a second effect (also after a restart and across API workers), stored answers."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from alerts.lifecycle.model import AlertConfig
from alerts.lifecycle.pipeline import AlertPipeline
from devices.model import Device
from devices.registry import MemoryRegistry
from lifeline.alerting import case_config
from lifeline.app import create_app
from lifeline.auth import new_token, token_digest
from lifeline.db import open_database
from lifeline.settings import Settings, load_settings
from rules.model import Finding, FindingState, Severity

pytestmark = pytest.mark.integration
SECRET = "callback-secret-0123456789"


def vendor_sign(secret: str, method: str, path: str, key: str, ts: str, body: bytes) -> str:
    """The v2 scheme as a dispatch vendor implements it from the documentation."""
    message = "\n".join(["v2", method, path, key, ts]).encode() + b"\n" + body
    return "v2=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(case_id: int, body: bytes, *, key: str = "", ts: int | None = None,
                   method: str = "POST", path: str | None = None,
                   secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    path = path or f"/api/v1/cases/{case_id}/actions"
    headers = {"Content-Type": "application/json", "X-Lifeline-Timestamp": stamp,
               "X-Lifeline-Signature": vendor_sign(secret, method, path, key, stamp, body)}
    if key:
        headers["Idempotency-Key"] = key
    return headers


class Node:
    """One API worker: an app on its own engine over the shared database."""

    def __init__(self, db_url: str, settings: Settings) -> None:
        self.engine = open_database(db_url)
        self.client = TestClient(create_app(settings, self.engine))

    def post(self, case_id: int, body: bytes, headers: dict[str, str]) -> Any:
        return self.client.post(f"/api/v1/cases/{case_id}/actions", content=body,
                                headers=headers)

    def close(self) -> None:
        self.client.close()
        self.engine.dispose()


class World:
    def __init__(self, db_url: str, tmp_path: Path, window: str = "5m") -> None:
        self.db_url = db_url
        self.tokens = {role: new_token() for role in ("viewer", "operator")}
        self.settings = load_settings(None, run_dir=tmp_path, api={"tokens": [
            {"name": f"{r}-user", "role": r, "sha256": token_digest(t)}
            for r, t in self.tokens.items()]},
            webhook={"url": "http://127.0.0.1:9/x", "secret": SECRET,
                     "callback_window": window})
        self.nodes: list[Node] = []
        node = self.node()
        registry = MemoryRegistry([Device("gas-1", "gas_alarm", grid="G1"),
                                   Device("gas-2", "gas_alarm", grid="G2")])
        pipeline = AlertPipeline(node.engine, registry, AlertConfig(resolve_delay_ns=0),
                                 case_config(self.settings))
        now = time.time_ns()
        pipeline.process([
            Finding("lel", d, "lel", FindingState.FIRING, Severity.CRITICAL, now, 60.0)
            for d in ("gas-1", "gas-2")])
        data = node.client.get("/api/v1/alerts", headers=self.bearer("viewer")).json()["data"]
        self.case = {a["device"]: a["case_id"] for a in data}

    def node(self) -> Node:
        node = Node(self.db_url, self.settings)
        self.nodes.append(node)
        return node

    def bearer(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def history(self, case_id: int) -> list[tuple[str, str]]:
        doc = self.nodes[-1].client.get(f"/api/v1/cases/{case_id}",
                                        headers=self.bearer("viewer")).json()
        return [(h["action"], h["note"]) for h in doc["history"]]

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    w = World(db_url, tmp_path)
    yield w
    w.close()


def test_exactly_one_credential(world: World) -> None:
    node, gas = world.nodes[0], world.case["gas-1"]
    op, viewer = world.tokens["operator"], world.tokens["viewer"]
    cases: dict[str, tuple[dict[str, str], int]] = {}

    def body(name: str) -> bytes:
        return orjson.dumps({"action": "comment", "note": name})

    def sig(name: str) -> dict[str, str]:
        return signed_headers(gas, body(name))

    only_ts = {"X-Lifeline-Timestamp": str(int(time.time()))}
    cases = {
        "none": ({}, 401),
        "bearer operator": ({"Authorization": f"Bearer {op}"}, 200),
        "bearer, scheme in lower case": ({"Authorization": f"bearer {op}"}, 200),
        "bearer viewer": ({"Authorization": f"Bearer {viewer}"}, 403),
        "bearer unknown": ({"Authorization": "Bearer ll_nope"}, 401),
        "bearer empty": ({"Authorization": "Bearer "}, 401),
        "basic": ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
        "token scheme": ({"Authorization": f"Token {op}"}, 401),
        "bare token": ({"Authorization": op}, 401),
        "signature": (sig("signature"), 200),
        "signature + bearer operator": ({**sig("signature + bearer operator"),
                                         "Authorization": f"Bearer {op}"}, 401),
        "signature + basic": ({**sig("signature + basic"),
                               "Authorization": "Basic dXNlcjpwYXNz"}, 401),
        "signature + digest": ({**sig("signature + digest"),
                                "Authorization": 'Digest username="x"'}, 401),
        "signature + empty authorization": ({**sig("signature + empty authorization"),
                                             "Authorization": ""}, 401),
        "timestamp only": (only_ts, 401),
        "signature without timestamp": (
            {"X-Lifeline-Signature": sig("x")["X-Lifeline-Signature"]}, 401),
        "bearer operator + timestamp": ({**only_ts, "Authorization": f"Bearer {op}"}, 401),
        "v1 signature": ({"X-Lifeline-Timestamp": only_ts["X-Lifeline-Timestamp"],
                          "X-Lifeline-Signature": "sha256=" + hmac.new(
                              SECRET.encode(), only_ts["X-Lifeline-Timestamp"].encode()
                              + b"." + body("v1 signature"), hashlib.sha256).hexdigest()},
                         401),
    }
    got = {name: node.post(gas, body(name), headers).status_code
           for name, (headers, _) in cases.items()}
    assert got == {name: code for name, (_, code) in cases.items()}
    applied = {note for action, note in world.history(gas) if action == "comment"}
    assert applied == {name for name, (_, code) in cases.items() if code == 200}
    # a signed callback with another scheme beside it used to pass with every action
    raw = orjson.dumps({"action": "rework"})
    for auth in ("Basic dXNlcjpwYXNz", "Token x"):
        resp = node.post(gas, raw, {**signed_headers(gas, raw), "Authorization": auth})
        assert resp.status_code == 401, resp.text
    raw = orjson.dumps({"action": "register"})
    assert node.post(gas, raw, signed_headers(gas, raw)).status_code == 403
    assert [a for a, _ in world.history(gas)].count("register") == 1  # only the automatic one


def test_signature_covers_method_path_key_and_timestamp(world: World) -> None:
    node, gas, other = world.nodes[0], world.case["gas-1"], world.case["gas-2"]
    raw = orjson.dumps({"action": "comment", "note": "bound"})
    now = int(time.time())
    refused = {
        "another case": (other, signed_headers(gas, raw)),
        "another method": (gas, signed_headers(gas, raw, method="PUT")),
        "another key": (gas, {**signed_headers(gas, raw, key="k-a"), "Idempotency-Key": "k-b"}),
        "key added": (gas, {**signed_headers(gas, raw), "Idempotency-Key": "k-c"}),
        "key removed": (gas, {k: v for k, v in signed_headers(gas, raw, key="k-d").items()
                              if k != "Idempotency-Key"}),
        "another timestamp": (gas, {**signed_headers(gas, raw, ts=now),
                                    "X-Lifeline-Timestamp": str(now - 1)}),
        "another secret": (gas, signed_headers(gas, raw, secret="wrong-secret-wrong")),
        "path with a prefix": (gas, signed_headers(gas, raw,
                                                   path=f"/x/api/v1/cases/{gas}/actions")),
    }
    got = {name: node.post(case_id, raw, headers).status_code
           for name, (case_id, headers) in refused.items()}
    assert got == dict.fromkeys(refused, 401)
    assert ("comment", "bound") not in world.history(gas) + world.history(other)
    # the same bytes, signed for the other case, pass
    assert node.post(other, raw, signed_headers(other, raw, key="k-e")).status_code == 200
    assert world.history(other).count(("comment", "bound")) == 1


def test_replayed_signature_has_no_second_effect(world: World) -> None:
    node, gas = world.nodes[0], world.case["gas-1"]
    raw = orjson.dumps({"action": "return", "note": "not ours"})
    headers = signed_headers(gas, raw)
    codes = [node.post(gas, raw, headers) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 409, 409], [r.text for r in codes]
    assert "replay" in codes[1].json()["detail"]
    case = node.client.get(f"/api/v1/cases/{gas}", headers=world.bearer("viewer")).json()
    assert case["return_count"] == 1 and case["state"] == "dispatched"
    # with an idempotency key: answered as a replay, still one effect
    raw = orjson.dumps({"action": "return", "note": "still not ours"})
    headers = signed_headers(gas, raw, key="ret-2")
    first, *again = [node.post(gas, raw, headers) for _ in range(3)]
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    for resp in again:
        assert resp.status_code == 200 and resp.headers["Idempotent-Replayed"] == "true"
        assert resp.json() == first.json()
    case = node.client.get(f"/api/v1/cases/{gas}", headers=world.bearer("viewer")).json()
    assert case["return_count"] == 2
    assert [a for a, _ in world.history(gas)].count("return") == 2


def test_idempotent_replay_returns_the_stored_first_answer(world: World) -> None:
    node, gas, other = world.nodes[0], world.case["gas-1"], world.case["gas-2"]
    accept = orjson.dumps({"action": "accept", "external_id": "CG-1"})
    first = node.post(gas, accept, signed_headers(gas, accept, key="acc-1"))
    assert first.status_code == 200 and first.json()["state"] == "in_progress"
    handled = node.post(gas, orjson.dumps({"action": "handled"}),
                        {**world.bearer("operator"), "Content-Type": "application/json"})
    assert handled.json()["state"] == "handled"
    again = node.post(gas, accept, signed_headers(gas, accept, key="acc-1", ts=int(time.time())
                                                  - 1))
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()  # the first answer, not the case as it is now
    # a refusal is the first answer too
    ret = orjson.dumps({"action": "return"})
    refused = node.post(gas, ret, signed_headers(gas, ret, key="ret-1"))
    assert refused.status_code == 409 and "not allowed" in refused.json()["detail"]
    rework = node.post(gas, orjson.dumps({"action": "rework"}), world.bearer("operator"))
    assert rework.json()["state"] == "dispatched"  # where a return would be allowed
    replay = node.post(gas, ret, signed_headers(gas, ret, key="ret-1", ts=int(time.time())
                                                + 1))
    assert (replay.status_code, replay.json()) == (409, refused.json())
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert "return" not in [a for a, _ in world.history(gas)]
    # the key with another body, or for another case: refused, nothing applied
    comment = orjson.dumps({"action": "comment", "note": "reuse"})
    for case_id, body in ((gas, comment), (other, accept)):
        resp = node.post(case_id, body, signed_headers(case_id, body, key="acc-1"))
        assert resp.status_code == 409 and "another request" in resp.json()["detail"]
    resp = node.post(gas, comment, {**world.bearer("operator"), "Idempotency-Key": "acc-1"})
    assert resp.status_code == 409
    assert ("comment", "reuse") not in world.history(gas)
    assert world.history(other)[-1][0] != "accept"


def test_replay_outside_the_window_and_the_nonce_store_is_bounded(db_url: str,
                                                                  tmp_path: Path) -> None:
    world = World(db_url, tmp_path, window="3s")
    try:
        node, gas = world.nodes[0], world.case["gas-1"]
        raw = orjson.dumps({"action": "comment", "note": "old"})
        headers = signed_headers(gas, raw, ts=int(time.time()) - 1)
        assert node.post(gas, raw, headers).status_code == 200
        assert node.post(gas, raw, headers).status_code == 409
        time.sleep(2.6)
        late = node.post(gas, raw, headers)
        assert late.status_code == 401 and "window" in late.json()["detail"]
        fresh = orjson.dumps({"action": "comment", "note": "new"})
        assert node.post(gas, fresh, signed_headers(gas, fresh)).status_code == 200
        with node.engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT COUNT(*) FROM case_callback_nonces")).scalar()
        assert kept == 1  # the expired signature was dropped
        assert world.history(gas).count(("comment", "old")) == 1
    finally:
        world.close()


def test_replay_after_a_restart_and_across_workers(world: World) -> None:
    first, gas = world.nodes[0], world.case["gas-1"]
    comment = orjson.dumps({"action": "comment", "note": "once"})
    comment_headers = signed_headers(gas, comment)
    accept = orjson.dumps({"action": "accept"})
    accept_headers = signed_headers(gas, accept, key="acc-restart")
    assert first.post(gas, comment, comment_headers).status_code == 200
    accepted = first.post(gas, accept, accept_headers)
    assert accepted.status_code == 200
    first.close()
    world.nodes.remove(first)
    restarted = world.node()  # a new app and engine on the same database
    assert restarted.post(gas, comment, comment_headers).status_code == 409
    handled = restarted.post(gas, orjson.dumps({"action": "handled"}),
                             world.bearer("operator"))
    assert handled.json()["state"] == "handled"
    replay = restarted.post(gas, accept, accept_headers)
    assert replay.status_code == 200 and replay.json() == accepted.json()
    assert world.history(gas).count(("comment", "once")) == 1
    # two workers at once, the same signed bytes sent to both, several times
    second = world.node()
    raw = orjson.dumps({"action": "comment", "note": "raced"})
    headers = signed_headers(gas, raw)
    codes: list[int] = []
    lock = threading.Lock()

    def send(node: Node) -> None:
        code = node.post(gas, raw, headers).status_code
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=send, args=(n,)) for n in (restarted, second) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(codes) == [200] + [409] * 5
    assert world.history(gas).count(("comment", "raced")) == 1
    # with a key: one effect, the others answered by the key (or told to retry)
    raw = orjson.dumps({"action": "comment", "note": "raced with a key"})
    headers = signed_headers(gas, raw, key="raced-key")
    codes.clear()
    threads = [threading.Thread(target=send, args=(n,)) for n in (restarted, second) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert 200 in codes and set(codes) <= {200, 409}, codes
    assert world.history(gas).count(("comment", "raced with a key")) == 1
    late = second.post(gas, raw, headers)
    assert late.status_code == 200 and late.headers["Idempotent-Replayed"] == "true"


def test_upgrade_keeps_the_answers_of_old_idempotency_keys(world: World) -> None:
    """A database from before the stored status and the signature table is upgraded: its
    keys answer their stored first answer, and signatures are used once."""
    node, gas = world.nodes[0], world.case["gas-1"]
    headers = {**world.bearer("operator"), "Idempotency-Key": "old-key"}
    first = node.post(gas, orjson.dumps({"action": "accept"}), headers)
    assert first.status_code == 200
    with node.engine.begin() as conn:  # back to the schema of version 2
        conn.exec_driver_sql("DROP TABLE case_callback_nonces")
        conn.exec_driver_sql("ALTER TABLE case_callback_keys DROP COLUMN status")
        conn.exec_driver_sql("UPDATE schema_versions SET version = 2 "
                             "WHERE component = 'alerts'")
    node.close()
    world.nodes.remove(node)
    upgraded = world.node()
    replay = upgraded.post(gas, orjson.dumps({"action": "accept"}), headers)
    assert replay.status_code == 200 and replay.json() == first.json()
    raw = orjson.dumps({"action": "comment", "note": "after the upgrade"})
    signed = signed_headers(gas, raw)
    assert [upgraded.post(gas, raw, signed).status_code for _ in range(2)] == [200, 409]


def test_refused_signed_callbacks_are_logged_without_their_headers(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    node, gas = world.nodes[0], world.case["gas-1"]
    caplog.set_level(logging.WARNING, logger="lifeline.api.cases")
    raw = orjson.dumps({"action": "comment", "note": "logged"})
    headers = signed_headers(gas, raw)
    bad = signed_headers(gas, raw, secret="wrong-secret-wrong")
    codes = [node.post(gas, raw, h).status_code for h in (headers, headers, bad)]
    assert codes == [200, 409, 401]
    lines = [r.getMessage() for r in caplog.records
             if r.name == "lifeline.api.cases" and r.levelno == logging.WARNING]
    assert any(f"case {gas} refused" in m and "replay" in m for m in lines), lines
    assert any(f"case {gas} refused" in m and "bad signature" in m for m in lines), lines
    for value in (headers["X-Lifeline-Signature"], bad["X-Lifeline-Signature"], SECRET):
        assert value not in caplog.text
