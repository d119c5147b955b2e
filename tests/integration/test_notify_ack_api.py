"""Acknowledge from a notification through the API: the signed link shows a page (GET
never acts), POST accepts the case / acknowledges the alert once; forged, expired and
re-used links do nothing more."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from alerts.cases.model import CaseConfig, CaseState
from alerts.cases.store import get_case
from alerts.lifecycle.model import AlertConfig
from alerts.lifecycle.pipeline import AlertPipeline
from alerts.lifecycle.store import get_alert
from alerts.notify.links import LinkSigner
from devices.model import Device
from devices.registry import MemoryRegistry
from lifeline.app import create_app
from lifeline.db import open_database
from lifeline.settings import load_settings
from rules.model import Finding, FindingState, Severity

pytestmark = pytest.mark.integration
SECRET = "link-secret-0123456789abcdef"


def token_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["token"][0]


def test_ack_links(tmp_path: Path) -> None:
    settings = load_settings(None, run_dir=tmp_path, notify={
        "link_secret": SECRET, "public_url": "https://duty.example", "link_ttl": "1h"})
    engine = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    p = AlertPipeline(engine, MemoryRegistry([Device("gas-1", "gas_alarm", grid="G1"),
                                              Device("w-1", "water_pressure", grid="W1")]),
                      AlertConfig(resolve_delay_ns=0), CaseConfig())
    now = time.time_ns()
    p.process([Finding("r", "gas-1", "lel", FindingState.FIRING, Severity.CRITICAL, now, 60.0),
               Finding("r", "w-1", "p", FindingState.FIRING, Severity.WARNING, now, 0.1)])
    with engine.connect() as conn:
        ids: dict[str, int] = dict(conn.execute(sa.text("SELECT device_id, id FROM alerts")).all())
        case_id = get_alert(conn, ids["gas-1"]).case_id
    assert case_id is not None
    client = TestClient(create_app(settings, engine, {}), raise_server_exceptions=False)
    signer = LinkSigner(SECRET, "https://duty.example", 3600)
    link = signer.link("case", case_id, int(time.time()))
    assert link.startswith("https://duty.example/api/v1/notify/ack?token=")
    token = token_of(link)

    page = client.get("/api/v1/notify/ack", params={"token": token})
    assert page.status_code == 200 and "<form method=\"post\"" in page.text
    with engine.connect() as conn:  # a GET (a chat app's preview) changes nothing
        assert get_case(conn, case_id).state is CaseState.DISPATCHED

    first = client.post("/api/v1/notify/ack", params={"token": token})
    assert first.status_code == 200 and "已接单" in first.text
    again = client.post("/api/v1/notify/ack", params={"token": token})
    assert again.status_code == 200 and "此链接已使用" in again.text and "已接单" in again.text
    with engine.connect() as conn:
        case = get_case(conn, case_id)
        accepts = conn.execute(sa.text(
            "SELECT count(*) FROM case_history WHERE case_id = :c AND action = 'accept'"),
            {"c": case_id}).scalar_one()
    assert case.state is CaseState.IN_PROGRESS and case.accepted_ns is not None
    assert accepts == 1

    # a second, fresh link for the same case: the workflow refuses, nothing changes
    refused = client.post("/api/v1/notify/ack",
                          params={"token": signer.token("case", case_id, int(time.time()))})
    assert refused.status_code == 409

    alert_token = signer.token("alert", ids["w-1"], int(time.time()))
    assert client.post("/api/v1/notify/ack", params={"token": alert_token}).status_code == 200
    with engine.connect() as conn:
        assert get_alert(conn, ids["w-1"]).acked_by == "notify-link"

    forged = LinkSigner("another-secret-0123456789", "https://x", 3600).token(
        "case", case_id, int(time.time()))
    expired = signer.token("alert", ids["w-1"], int(time.time()) - 7200)
    tampered = token.replace(token[3], "A" if token[3] != "A" else "B", 1)
    for bad in (forged, expired, tampered, "nonsense"):
        assert client.post("/api/v1/notify/ack", params={"token": bad}).status_code == 401
        assert client.get("/api/v1/notify/ack", params={"token": bad}).status_code == 401
