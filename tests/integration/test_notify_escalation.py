"""Escalation through the real alert pipeline and outbox (SQLite and PostgreSQL): critical
gas goes to the unit's group at once and to the duty manager by SMS only if the case is not
accepted within 5 minutes; silenced alerts reach no channel."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from alerts.cases.model import CaseConfig, CaseState
from alerts.cases.store import get_case
from alerts.cases.workflow import Action
from alerts.delivery.store import outbox
from alerts.lifecycle.model import AlertConfig
from alerts.lifecycle.ops import ack_alert
from alerts.lifecycle.pipeline import AlertPipeline
from alerts.notify.channels import SmsChannel, WeComChannel
from alerts.notify.ratelimit import RateLimiter
from alerts.notify.render import Renderer
from alerts.notify.routing import NotifyRoute, Router
from alerts.notify.worker import NotifyWorker
from alerts.silences.model import SilenceKind
from alerts.silences.ops import create_silence
from devices.model import Device
from devices.registry import MemoryRegistry
from lifeline.alerting import AlertsRuntime
from lifeline.db import open_database
from lifeline.settings import load_settings
from rules.model import Finding, FindingState, Severity
from tests.integration.notify_platforms import Platform, serve, stop
from tests.support import wait_for

pytestmark = pytest.mark.integration
S = 1_000_000_000
T0 = 1_700_000_000 * S
DEVICES = [Device("gas-1", "gas_alarm", grid="G1", unit="燃气公司"),
           Device("gas-2", "gas_alarm", grid="G2", unit="燃气公司"),
           Device("gas-3", "gas_alarm", grid="G3", unit="燃气公司")]
ROUTES = [NotifyRoute(channels=("unit-group",), events=frozenset({"alert.firing"}),
                      min_severity="critical", device_types=("gas_*",)),
          NotifyRoute(channels=("duty-sms",), events=frozenset({"alert.firing"}),
                      min_severity="critical", device_types=("gas_*",), after_ns=300 * S,
                      after="5m")]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def platforms() -> Iterator[tuple[Platform, Platform]]:
    group, sms = serve(Platform("wecom")), serve(Platform("sms"))
    yield group, sms
    stop(group)
    stop(sms)


def fire(device: str, t: int) -> Finding:
    return Finding("gas-lel", device, "lel", FindingState.FIRING, Severity.CRITICAL, t, 60.0)


def test_escalation_only_when_not_accepted_in_time(
        db_url: str, platforms: tuple[Platform, Platform]) -> None:
    group, sms = platforms
    engine = open_database(db_url)
    clock = Clock()
    p = AlertPipeline(engine, MemoryRegistry(DEVICES), AlertConfig(resolve_delay_ns=0),
                      CaseConfig(), clock=clock)
    p.cases.fanout = Router(ROUTES)
    w = NotifyWorker(engine, Renderer(MemoryRegistry(DEVICES)), [
        (WeComChannel("unit-group", group.url), RateLimiter(()), 10),
        (SmsChannel("duty-sms", sms.url, body="{{ text }}"), RateLimiter(()), 10)],
        clock=clock)

    p.process([fire("gas-1", T0), fire("gas-2", T0), fire("gas-3", T0)])
    assert w.run_once("unit-group") == 3 and len(group.accepted) == 3  # at once
    assert w.run_once("duty-sms") == 0 and sms.received == []  # not before 5 minutes
    with engine.connect() as conn:
        case_of = {r.device_id: r.case_id for r in conn.execute(sa.text(
            "SELECT device_id, case_id FROM alerts"))}
        assert get_case(conn, case_of["gas-1"]).state is CaseState.DISPATCHED

    clock.now = T0 + 240 * S  # within the 5 minutes: gas-2's case accepted, gas-3 acked
    with p.cases.lock, engine.begin() as conn:
        p.cases.apply(conn, case_of["gas-2"], Action.ACCEPT, "燃气公司", clock.now)
    with engine.connect() as conn:
        gas3 = conn.execute(sa.text("SELECT id FROM alerts WHERE device_id = 'gas-3'")
                            ).scalar_one()
    ack_alert(engine, gas3, "值班员", "on my way", clock.now)
    assert w.run_once("duty-sms") == 0

    clock.now = T0 + 301 * S
    w.run_once("duty-sms")
    assert len(sms.accepted) == 1  # only gas-1: nobody accepted it
    assert "【升级：5m未接单】" in sms.accepted[0].body.decode()
    assert f"案件#{case_of['gas-1']}" in sms.accepted[0].body.decode()
    with engine.connect() as conn:
        got = {orjson.loads(r.payload)["alert"]["device"]: r.status for r in conn.execute(
            sa.select(outbox).where(outbox.c.target == "duty-sms"))}
    assert got == {"gas-1": "delivered", "gas-2": "cancelled", "gas-3": "cancelled"}
    assert w.stats("duty-sms").cancelled == 2


def test_a_silenced_alert_reaches_no_channel(db_url: str) -> None:
    engine = open_database(db_url)
    clock = Clock()
    p = AlertPipeline(engine, MemoryRegistry(DEVICES), AlertConfig(resolve_delay_ns=0),
                      CaseConfig(), clock=clock)
    p.cases.fanout = Router(ROUTES)
    create_silence(engine, kind=SilenceKind.SILENCE, matchers={"device": "gas-1"},
                   starts_ns=T0 - S, ends_ns=T0 + 3600 * S, created_by="ops", comment="works",
                   now_ns=T0 - S)
    p.process([fire("gas-1", T0), fire("gas-2", T0)])
    with engine.connect() as conn:
        targets = [(orjson.loads(r.payload)["alert"]["device"], r.target) for r in
                   conn.execute(sa.select(outbox).where(outbox.c.event == "alert.firing"))]
    assert sorted(targets) == [("gas-2", ""), ("gas-2", "duty-sms"), ("gas-2", "unit-group")]


def test_the_runtime_routes_from_the_settings(tmp_path: Path,
                                              platforms: tuple[Platform, Platform]) -> None:
    group, _ = platforms
    settings = load_settings(None, run_dir=tmp_path, notify={
        "channels": [{"name": "unit-group", "type": "wecom", "url": group.url}],
        "routes": [{"channels": ["unit-group"], "min_severity": "critical"}]})
    engine = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    runtime = AlertsRuntime(settings, engine, MemoryRegistry(DEVICES), lambda lines: None)
    assert runtime.notify is not None
    assert runtime.case_book().fanout is runtime.notify.router
    runtime.notify.worker.start()
    try:
        runtime.pipeline.process([fire("gas-1", time.time_ns())])
        runtime.wake()
        # default events: the case's dispatch (enqueued first, with the case), then the alert
        assert wait_for(lambda: len(group.accepted) == 2, timeout=10)
    finally:
        runtime.notify.worker.stop(2)
    texts = [r.json()["markdown"]["content"] for r in group.accepted]
    assert "案件派遣" in texts[0] and "告警：燃气报警器 gas-lel" in texts[1]
