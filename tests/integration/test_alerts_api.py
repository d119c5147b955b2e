"""The alerts, silences, cases, callbacks, deliveries and KPI routes on a real database."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from alerts.delivery.signing import sign_callback
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


class Api:
    def __init__(self, client: TestClient, tokens: dict[str, str], pipeline: AlertPipeline,
                 settings: Settings) -> None:
        self.client = client
        self.tokens = tokens
        self.pipeline = pipeline
        self.settings = settings

    def h(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def signed(self, case_id: int, doc: Any, *, ts: int | None = None, secret: str = SECRET,
               key: str | None = None, raw: bytes | None = None,
               extra: dict[str, str] | None = None, to: int | None = None) -> Any:
        body = raw if raw is not None else orjson.dumps(doc)
        stamp = str(int(time.time()) if ts is None else ts)
        path = f"/api/v1/cases/{case_id}/actions"  # the case the signature is meant for
        headers = {"X-Lifeline-Timestamp": stamp,
                   "X-Lifeline-Signature": sign_callback(secret, "POST", path, key or "",
                                                         stamp, body),
                   "Content-Type": "application/json", **(extra or {})}
        if key:
            headers["Idempotency-Key"] = key
        return self.client.post(f"/api/v1/cases/{case_id if to is None else to}/actions",
                                content=body, headers=headers)


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Api:
    tokens = {role: new_token() for role in ("viewer", "operator", "admin")}
    settings = load_settings(None, run_dir=tmp_path, api={"tokens": [
        {"name": f"{r}-user", "role": r, "sha256": token_digest(t)} for r, t in tokens.items()]},
        webhook={"url": "http://127.0.0.1:9/x", "secret": SECRET})
    engine = open_database(db_url)
    registry = MemoryRegistry([Device("gas-1", "gas_alarm", grid="G1", unit="燃气公司"),
                               Device("p-1", "water_pressure", grid="W1")])
    pipeline = AlertPipeline(engine, registry, AlertConfig(resolve_delay_ns=0),
                             case_config(settings))
    now = time.time_ns()
    pipeline.process([
        Finding("lel", "gas-1", "lel", FindingState.FIRING, Severity.CRITICAL, now, 60.0),
        Finding("low", "p-1", "pressure", FindingState.FIRING, Severity.MINOR, now, 0.1),
    ])
    return Api(TestClient(create_app(settings, engine)), tokens, pipeline, settings)


def case_ids(api: Api) -> dict[str, int]:
    data = api.client.get("/api/v1/alerts", headers=api.h("viewer")).json()["data"]
    return {a["device"]: a["case_id"] for a in data}


def test_reads_need_viewer_and_writes_need_operator(api: Api) -> None:
    assert api.client.get("/api/v1/alerts").status_code == 401
    assert api.client.get("/api/v1/cases", headers=api.h("viewer")).json()["count"] == 2
    alert_id = api.client.get("/api/v1/alerts", headers=api.h("viewer")).json()["data"][0]["id"]
    for path, body in [(f"/api/v1/alerts/{alert_id}/ack", {}),
                       ("/api/v1/silences", {"matchers": {"device": "x"},
                                             "ends_at": "2030-01-01T00:00:00Z",
                                             "comment": "c"}),
                       ("/api/v1/cases/1/register", {}), ("/api/v1/cases/1/cancel", {}),
                       ("/api/v1/deliveries/1/resend", {})]:
        assert api.client.post(path, json=body, headers=api.h("viewer")).status_code == 403, path


def test_alert_filters_ack_and_unack(api: Api) -> None:
    r = api.client.get("/api/v1/alerts", params={"severity": "critical", "state": "firing"},
                       headers=api.h("viewer")).json()
    assert r["count"] == 1 and r["data"][0]["device"] == "gas-1"
    alert_id = r["data"][0]["id"]
    acked = api.client.post(f"/api/v1/alerts/{alert_id}/ack", json={"note": "crew sent"},
                            headers=api.h("operator")).json()
    assert acked["acked_by"] == "operator-user" and acked["ack_note"] == "crew sent"
    assert api.client.get("/api/v1/alerts", params={"acked": True},
                          headers=api.h("viewer")).json()["count"] == 1
    assert api.client.post(f"/api/v1/alerts/{alert_id}/unack",
                           headers=api.h("operator")).json()["acked"] is None
    assert api.client.post("/api/v1/alerts/999/ack", json={},
                           headers=api.h("operator")).status_code == 404
    assert api.client.post(f"/api/v1/alerts/{alert_id}/ack", json={"note": "x" * 1001},
                           headers=api.h("operator")).status_code == 422
    assert api.client.get("/api/v1/alerts", params={"state": "bogus"},
                          headers=api.h("viewer")).status_code == 422


@pytest.mark.parametrize("body", [
    {"matchers": {}, "ends_at": "2030-01-01T00:00:00Z", "comment": "c"},
    {"matchers": {"colour": "red"}, "ends_at": "2030-01-01T00:00:00Z", "comment": "c"},
    {"matchers": {"device": "x"}, "ends_at": "2030-01-01T00:00:00", "comment": "c"},
    {"matchers": {"device": "x"}, "ends_at": "2000-01-01T00:00:00Z", "comment": "c"},
    {"matchers": {"device": "x"}, "ends_at": "2030-01-01T00:00:00Z", "comment": ""},
    {"matchers": {"device": ""}, "ends_at": "2030-01-01T00:00:00Z", "comment": "c"},
    {"matchers": {"device": "x"}, "ends_at": "2030-01-01T00:00:00Z", "comment": "c", "x": 1},
])
def test_bad_silences_are_refused(api: Api, body: dict[str, Any]) -> None:
    assert api.client.post("/api/v1/silences", json=body,
                           headers=api.h("operator")).status_code == 422


def test_silence_create_list_expire(api: Api) -> None:
    created = api.client.post("/api/v1/silences", json={
        "kind": "maintenance", "matchers": {"grid": "W*", "type": "water_pressure"},
        "ends_at": "2099-01-01T00:00:00+08:00", "comment": "main replaced"},
        headers=api.h("operator"))
    assert created.status_code == 201
    s = created.json()
    assert s["active"] and s["created_by"] == "operator-user" and s["kind"] == "maintenance"
    listed = api.client.get("/api/v1/silences", headers=api.h("viewer")).json()
    assert [x["id"] for x in listed["data"]] == [s["id"]]
    expired = api.client.post(f"/api/v1/silences/{s['id']}/expire", headers=api.h("operator"))
    assert expired.json()["active"] is False
    assert api.client.get("/api/v1/silences", headers=api.h("viewer")).json()["count"] == 0
    assert api.client.get("/api/v1/silences", params={"include_expired": True},
                          headers=api.h("viewer")).json()["count"] == 1


def test_cases_filter_register_cancel_and_history(api: Api) -> None:
    ids = case_ids(api)
    gas, held = ids["gas-1"], ids["p-1"]
    r = api.client.get("/api/v1/cases", params={"state": "reported"},
                       headers=api.h("viewer")).json()
    assert [c["id"] for c in r["data"]] == [held]
    r = api.client.get("/api/v1/cases", params={"unit": "燃气公司"},
                       headers=api.h("viewer")).json()
    assert [c["id"] for c in r["data"]] == [gas]
    assert api.client.get("/api/v1/cases", params={"overdue": True},
                          headers=api.h("viewer")).json()["count"] == 0
    reg = api.client.post(f"/api/v1/cases/{held}/register", json={"note": "confirmed by phone"},
                          headers=api.h("operator")).json()
    assert reg["state"] == "dispatched" and reg["unit"] == "城市运行管理中心"
    again = api.client.post(f"/api/v1/cases/{held}/register", json={},
                            headers=api.h("operator"))
    assert again.status_code == 409
    assert "action 'register' is not allowed in state 'dispatched'" in again.json()["detail"]
    detail = api.client.get(f"/api/v1/cases/{held}", headers=api.h("viewer")).json()
    assert [(h["action"], h["actor"]) for h in detail["history"]] == [
        ("report", "system"), ("register", "operator-user"), ("dispatch", "system")]
    assert detail["history"][1]["note"] == "confirmed by phone"
    assert [a["device"] for a in detail["alerts"]] == ["p-1"]
    cancelled = api.client.post(f"/api/v1/cases/{held}/cancel", json={"note": "false alarm"},
                                headers=api.h("operator")).json()
    assert cancelled["state"] == "cancelled"
    assert api.client.get("/api/v1/cases/999", headers=api.h("viewer")).status_code == 404


def test_signed_callbacks_idempotency_and_replay_window(api: Api) -> None:
    gas = case_ids(api)["gas-1"]
    r = api.signed(gas, {"action": "accept", "external_id": "CG-2026-001", "actor": "zhang"},
                   key="k-1")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "in_progress" and r.json()["external_id"] == "CG-2026-001"
    again = api.signed(gas, {"action": "accept", "external_id": "CG-2026-001",
                             "actor": "zhang"}, key="k-1")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    other = api.signed(gas, {"action": "handled"}, key="k-1")
    assert other.status_code == 409 and "another request" in other.json()["detail"]
    history = api.client.get(f"/api/v1/cases/{gas}", headers=api.h("viewer")).json()["history"]
    assert [h["action"] for h in history].count("accept") == 1
    assert history[-1]["actor"] == "dispatch:zhang"
    # illegal transition: refused with a clear error, nothing changes
    bad = api.signed(gas, {"action": "close"})
    assert bad.status_code == 409 and "not allowed in state 'in_progress'" in bad.json()["detail"]
    # the dispatch system may not register or rework
    assert api.signed(gas, {"action": "rework"}).status_code == 403
    # replay window, wrong secret, missing headers
    assert api.signed(gas, {"action": "comment"}, ts=int(time.time()) - 3600).status_code == 401
    assert api.signed(gas, {"action": "comment"}, secret="wrong-secret-wrong").status_code == 401
    assert api.client.post(f"/api/v1/cases/{gas}/actions",
                           json={"action": "comment"}).status_code == 401
    # bearer token with operator role works; viewer does not
    ok = api.client.post(f"/api/v1/cases/{gas}/actions", json={"action": "handled"},
                         headers=api.h("operator"))
    assert ok.status_code == 200 and ok.json()["state"] == "handled"
    assert api.client.post(f"/api/v1/cases/{gas}/actions", json={"action": "comment"},
                           headers=api.h("viewer")).status_code == 403


def test_signed_callback_beside_another_auth_scheme_is_refused(api: Api) -> None:
    gas = case_ids(api)["gas-1"]
    for scheme in ("Basic dXNlcjpwYXNz", "Token abc", f"Bearer {api.tokens['operator']}"):
        for action in ("rework", "register", "comment"):
            r = api.signed(gas, {"action": action}, extra={"Authorization": scheme})
            assert r.status_code == 401, (scheme, action, r.text)
    history = api.client.get(f"/api/v1/cases/{gas}", headers=api.h("viewer")).json()["history"]
    assert [h["action"] for h in history].count("comment") == 0


def test_signed_callback_replays_have_no_second_effect(api: Api) -> None:
    ids = case_ids(api)
    gas, other = ids["gas-1"], ids["p-1"]
    stamp = int(time.time())
    codes = [api.signed(gas, {"action": "return"}, ts=stamp).status_code for _ in range(3)]
    assert codes == [200, 409, 409]
    case = api.client.get(f"/api/v1/cases/{gas}", headers=api.h("viewer")).json()
    assert case["return_count"] == 1
    # the bytes signed for one case, sent to another
    assert api.signed(gas, {"action": "comment", "note": "x"}, to=other).status_code == 401
    history = api.client.get(f"/api/v1/cases/{other}", headers=api.h("viewer")).json()
    assert "comment" not in [h["action"] for h in history["history"]]


def test_idempotent_replay_answers_the_stored_first_answer(api: Api) -> None:
    gas = case_ids(api)["gas-1"]
    headers = {**api.h("operator"), "Idempotency-Key": "op-accept"}
    first = api.client.post(f"/api/v1/cases/{gas}/actions", json={"action": "accept"},
                            headers=headers)
    assert first.json()["state"] == "in_progress"
    handled = api.client.post(f"/api/v1/cases/{gas}/actions", json={"action": "handled"},
                              headers=api.h("operator"))
    assert handled.json()["state"] == "handled"
    again = api.client.post(f"/api/v1/cases/{gas}/actions", json={"action": "accept"},
                            headers=headers)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b'{"action": "explode"}', b'{"action": "comment", "extra": 1}',
    b'{"action": "comment", "note": ' + b'"' + b"x" * 3000 + b'"}', b'{"action": null}',
    b'{"action": "comment", "key": ""}',
])
def test_malformed_callbacks_are_refused(api: Api, raw: bytes) -> None:
    gas = case_ids(api)["gas-1"]
    r = api.signed(gas, None, raw=raw)
    assert r.status_code == 422, r.text
    assert api.signed(gas, None, raw=b"{" * 70_000).status_code == 413
    assert api.signed(999, {"action": "comment"}).status_code == 404
    for bad_id in ("0", "-1", "99999999999999999999", "abc"):
        r = api.client.post(f"/api/v1/cases/{bad_id}/actions", json={"action": "comment"},
                            headers=api.h("operator"))
        assert r.status_code == 422, (bad_id, r.text)
        assert api.client.get(f"/api/v1/cases/{bad_id}",
                              headers=api.h("viewer")).status_code == 422
    assert api.client.get("/api/v1/alerts", params={"case_id": 2**40},
                          headers=api.h("viewer")).status_code == 422


def test_deliveries_list_and_resend(api: Api) -> None:
    r = api.client.get("/api/v1/deliveries", headers=api.h("viewer")).json()
    assert r["count"] >= 4
    assert {d["event"] for d in r["data"]} >= {"alert.firing", "case.reported",
                                                "case.dispatched"}
    first = r["data"][-1]
    assert api.client.post(f"/api/v1/deliveries/{first['id']}/resend",
                           headers=api.h("operator")).status_code == 403
    resent = api.client.post(f"/api/v1/deliveries/{first['id']}/resend",
                             headers=api.h("admin")).json()
    assert resent["delivery_id"] == first["delivery_id"] and resent["status"] == "pending"
    assert api.client.post("/api/v1/deliveries/99999/resend",
                           headers=api.h("admin")).status_code == 404
    assert api.client.get("/api/v1/deliveries", params={"status": "dead"},
                          headers=api.h("viewer")).json()["count"] == 0


def test_kpi_route(api: Api) -> None:
    r = api.client.get("/api/v1/kpi", params={"start": "2020-01-01T00:00:00Z", "by": "grid"},
                       headers=api.h("viewer"))
    assert r.status_code == 200
    data = {k["key"]: k for k in r.json()["data"]}
    assert data["G1"]["registered"] == 1 and data["G1"]["handled"] == 0
    assert data["G1"]["disposal_rate"] == 0.0 and data["G1"]["on_time_rate"] == 0.0
    assert data["G1"]["rework_rate"] is None  # nothing handled: no denominator
    assert api.client.get("/api/v1/kpi", params={"start": "2030-01-01T00:00:00Z",
                                                 "end": "2020-01-01T00:00:00Z"},
                          headers=api.h("viewer")).status_code == 422
    assert api.client.get("/api/v1/kpi", params={"start": "yesterday"},
                          headers=api.h("viewer")).status_code == 422
