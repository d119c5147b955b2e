"""Alert lifecycle, noise control and cases against real databases (SQLite + PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.cases.model import CaseConfig, CaseState, StageDeadlines
from alerts.cases.ops import case_with_history
from alerts.cases.workflow import Action
from alerts.delivery.store import outbox
from alerts.errors import IllegalTransitionError
from alerts.lifecycle.model import AlertConfig, AlertState
from alerts.lifecycle.ops import AlertFilter, ack_alert, list_alerts, unack_alert
from alerts.lifecycle.pipeline import AlertPipeline
from alerts.silences.model import SilenceKind
from alerts.silences.ops import create_silence, expire_silence
from devices.model import Device
from devices.registry import MemoryRegistry
from lifeline.db import open_database
from rules.model import Finding, FindingState, Severity
from tests.support import ReadingClock

pytestmark = pytest.mark.integration
S = 1_000_000_000
T0 = 1_700_000_000 * S
DEVICES = [
    Device("gas-1", "gas_alarm", grid="G1", unit="燃气公司"),
    Device("gas-2", "gas_alarm", grid="G1", unit="燃气公司"),
    Device("p-1", "water_pressure", grid="W1", unit="水务集团"),
    Device("p-2", "water_pressure", grid="W1", unit="水务集团"),
    Device("p-3", "water_pressure", grid="W1", unit="水务集团"),
    Device("p-9", "water_pressure", grid="W2", unit="水务集团"),
]


@dataclass
class DeviceState:
    offline: set[str] = field(default_factory=set)
    maintenance: set[str] = field(default_factory=set)
    faulty: set[str] = field(default_factory=set)

    def is_offline(self, device_id: str) -> bool:
        return device_id in self.offline

    def in_maintenance(self, device_id: str) -> bool:
        return device_id in self.maintenance

    def has_sensor_fault(self, device_id: str) -> bool:
        return device_id in self.faulty


def fire(device: str, rule: str, t: int, sev: Severity = Severity.CRITICAL,
         value: float = 60.0) -> Finding:
    return Finding(rule, device, "lel", FindingState.FIRING, sev, t, value)


def clear(device: str, rule: str, t: int, sev: Severity = Severity.CRITICAL) -> Finding:
    return Finding(rule, device, "lel", FindingState.RESOLVED, sev, t, 10.0)


def events(engine: Engine) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    import orjson

    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.event, outbox.c.payload).order_by(outbox.c.id))
        return [(e, orjson.loads(p)) for e, p in rows]


def names(engine: Engine) -> list[str]:
    return [e for e, _ in events(engine)]


def make(db_url: str, *, alert: AlertConfig | None = None, case: CaseConfig | None = None,
         devices: DeviceState | None = None) -> tuple[AlertPipeline, list[str]]:
    engine = open_database(db_url)
    lines: list[str] = []
    clock = ReadingClock(T0)
    p = AlertPipeline(engine, MemoryRegistry(DEVICES), alert or AlertConfig(resolve_delay_ns=0),
                      case or CaseConfig(), devices=devices, write_lines=lines.extend,
                      clock=clock)
    clock.follow(p)
    return p, lines


def test_lifecycle_fingerprint_severity_reopen_and_ack(db_url: str) -> None:
    p, lines = make(db_url, alert=AlertConfig(resolve_delay_ns=0, reopen_ns=300 * S))
    p.process([fire("gas-1", "r1", T0, Severity.MAJOR)])
    p.process([fire("gas-1", "r1", T0 + S, Severity.MAJOR)])  # same state: nothing new
    p.process([fire("gas-1", "r1", T0 + 2 * S, Severity.CRITICAL)])  # severity change
    (a,), total = list_alerts(p.engine, AlertFilter())
    assert total == 1 and a.fingerprint == "gas-1/r1" and a.severity is Severity.CRITICAL
    assert a.grid == "G1" and a.device_type == "gas_alarm" and a.state is AlertState.FIRING
    p.process([clear("gas-1", "r1", T0 + 10 * S)])
    p.process([fire("gas-1", "r1", T0 + 100 * S)])  # within the reopen window
    (b,), total = list_alerts(p.engine, AlertFilter())
    assert total == 1 and b.id == a.id and b.state is AlertState.FIRING and b.case_id == a.case_id
    p.process([clear("gas-1", "r1", T0 + 200 * S)])
    p.process([fire("gas-1", "r1", T0 + 2000 * S)])  # outside: a fresh occurrence
    (c,), _ = list_alerts(p.engine, AlertFilter())
    assert c.first_seen_ns == T0 + 2000 * S and c.changes == (T0 + 2000 * S,)
    assert names(p.engine).count("alert.firing") == 4  # first, severity, reopen, fresh
    assert names(p.engine).count("alert.resolved") == 2
    acked = ack_alert(p.engine, c.id, "duty-li", "on my way", T0 + 2001 * S)
    assert (acked.acked_by, acked.acked_ns, acked.ack_note) == ("duty-li", T0 + 2001 * S,
                                                                 "on my way")
    assert list_alerts(p.engine, AlertFilter(acked=True))[1] == 1
    assert unack_alert(p.engine, c.id, "duty-li").acked_ns is None
    assert any(line.startswith("lifeline_alert,device=gas-1,rule=r1,severity=critical")
               for line in lines)


def test_pending_alert_fires_after_hold_and_pending_blip_notifies_nothing(db_url: str) -> None:
    p, _ = make(db_url, alert=AlertConfig(pending_ns=30 * S, resolve_delay_ns=0))
    p.process([fire("gas-1", "r1", T0), clear("gas-1", "r1", T0 + 5 * S)])
    p.tick(T0 + 60 * S)
    assert names(p.engine) == []
    p.process([fire("gas-2", "r1", T0 + 100 * S)])
    p.tick(T0 + 110 * S)
    assert list_alerts(p.engine, AlertFilter(device="gas-2"))[0][0].state is AlertState.PENDING
    p.tick(T0 + 131 * S)
    assert list_alerts(p.engine, AlertFilter(device="gas-2"))[0][0].state is AlertState.FIRING
    assert names(p.engine).count("alert.firing") == 1


def test_flapping_hour_of_oscillation_gives_one_notification(db_url: str) -> None:
    """A value oscillating around the limit for an hour (a finding every 40 s)."""
    p, _ = make(db_url, alert=AlertConfig(resolve_delay_ns=60 * S, reopen_ns=300 * S,
                                          flap_window_ns=1800 * S, flap_threshold=6))
    t = T0
    for i in range(90):
        f = fire if i % 2 == 0 else clear
        p.process([f("gas-1", "lel-high", t)])
        p.tick(t + 20 * S)
        t += 40 * S
    alert_events = [e for e in names(p.engine) if e.startswith("alert.")]
    assert alert_events == ["alert.firing"]
    (a,), _ = list_alerts(p.engine, AlertFilter())
    assert a.flapping
    # a slower oscillation (every 4 minutes, beyond the resolve delay) is held too
    for i in range(16):
        f = fire if i % 2 == 0 else clear
        p.process([f("gas-2", "lel-high", t)])
        p.tick(t + 120 * S)
        t += 240 * S
    gas2 = [b for e, b in events(p.engine) if e.startswith("alert.")
            and b["alert"]["device"] == "gas-2"]
    assert 2 <= len(gas2) <= 7  # notified until flap detection holds it
    assert list_alerts(p.engine, AlertFilter(device="gas-2"))[0][0].flapping
    # calm for a whole flap window: flapping ends and the final state is notified once
    p.tick(t + 1900 * S)
    assert not list_alerts(p.engine, AlertFilter(device="gas-2"))[0][0].flapping


def test_grouping_several_sensors_of_one_grid_make_one_case(db_url: str) -> None:
    p, _ = make(db_url, case=CaseConfig(group_window_ns=600 * S))
    burst = [fire(d, "pressure-drop", T0 + i * S, Severity.MAJOR) for i, d in
             enumerate(["p-1", "p-2", "p-3"])]
    p.process(burst)
    p.process([fire("p-9", "pressure-drop", T0 + 5 * S, Severity.MAJOR)])  # another grid
    p.process([fire("gas-1", "lel", T0 + 6 * S, Severity.CRITICAL)])  # another type
    alerts, _ = list_alerts(p.engine, AlertFilter(grid="W1"))
    assert len({a.case_id for a in alerts}) == 1
    case_id = alerts[0].case_id
    assert case_id is not None
    case, history, members = case_with_history(p.engine, case_id)
    assert len(members) == 3 and case.grid == "W1" and case.unit == "水务集团"
    assert [h.action for h in history].count("alert") == 2
    all_alerts, _ = list_alerts(p.engine, AlertFilter())
    assert len({a.case_id for a in all_alerts}) == 3
    assert names(p.engine).count("case.reported") == 3
    # past the group window, while the burst's alerts still fire, a new alert joins them
    p.process([fire("p-2", "other-rule", T0 + 2000 * S, Severity.MAJOR)])
    assert len({a.case_id for a in list_alerts(p.engine, AlertFilter())[0]}) == 3
    # once they have all resolved, a new burst past the window is a new case
    p.process([clear(d, r, T0 + 2100 * S, Severity.MAJOR) for d, r in
               [("p-1", "pressure-drop"), ("p-2", "pressure-drop"), ("p-3", "pressure-drop"),
                ("p-2", "other-rule")]])
    p.process([fire("p-1", "third-rule", T0 + 3000 * S, Severity.MAJOR)])
    assert len({a.case_id for a in list_alerts(p.engine, AlertFilter())[0]}) == 4


def test_silence_and_maintenance_hold_then_release(db_url: str) -> None:
    p, _ = make(db_url)
    s = create_silence(p.engine, kind=SilenceKind.SILENCE, matchers={"grid": "G1", "rule": "r*"},
                       starts_ns=T0, ends_ns=T0 + 600 * S, created_by="ops-wang",
                       comment="pipe works", now_ns=T0)
    p.process([fire("gas-1", "r1", T0 + S), fire("p-1", "r1", T0 + S)])
    (held,), _ = list_alerts(p.engine, AlertFilter(device="gas-1"))
    assert held.suppressed == f"silence:{s.id}" and held.case_id is None
    assert [b["alert"]["device"] for e, b in events(p.engine) if e == "alert.firing"] == ["p-1"]
    expire_silence(p.engine, s.id, "ops-wang", T0 + 60 * S)
    p.tick(T0 + 61 * S)
    firing = [b["alert"]["device"] for e, b in events(p.engine) if e == "alert.firing"]
    assert firing == ["p-1", "gas-1"]
    m = create_silence(p.engine, kind=SilenceKind.MAINTENANCE, matchers={"device": "p-9"},
                       starts_ns=T0 + 100 * S, ends_ns=T0 + 200 * S, created_by="ops",
                       comment="valve swap", now_ns=T0)
    p.process([fire("p-9", "r1", T0 + 150 * S)])
    assert list_alerts(p.engine, AlertFilter(device="p-9"))[0][0].suppressed == \
        f"maintenance:{m.id}"
    p.tick(T0 + 201 * S)
    assert list_alerts(p.engine, AlertFilter(device="p-9"))[0][0].suppressed == ""
    assert names(p.engine).count("alert.firing") == 3


@pytest.mark.parametrize("bad", [
    {"matchers": {}, "err": "at least one matcher"},
    {"matchers": {"colour": "red"}, "err": "unknown matcher keys"},
    {"matchers": {"device": "x"}, "ends": -1, "err": "end after it starts"},
])
def test_bad_silences_are_refused(db_url: str, bad: dict) -> None:  # type: ignore[type-arg]
    from alerts.errors import AlertsError

    engine = open_database(db_url)
    with pytest.raises(AlertsError, match=bad["err"]):
        create_silence(engine, kind=SilenceKind.SILENCE, matchers=bad["matchers"],
                       starts_ns=T0, ends_ns=T0 + bad.get("ends", 10), created_by="x",
                       comment="", now_ns=T0)


def test_inhibition_by_device_state_fault_event_and_critical(db_url: str) -> None:
    state = DeviceState(offline={"p-1"}, maintenance={"p-2"}, faulty={"p-3"})
    p, _ = make(db_url, devices=state)
    p.process([fire(d, "pressure-low", T0, Severity.MAJOR) for d in ("p-1", "p-2", "p-3")])
    reasons = {a.device_id: a.suppressed for a in list_alerts(p.engine, AlertFilter())[0]}
    assert reasons == {"p-1": "inhibited:offline", "p-2": "inhibited:maintenance",
                       "p-3": "inhibited:sensor_fault"}
    # the device's own fault event is not inhibited, and it inhibits its process alarms
    p.process([fire("p-9", "event:fault", T0 + S, Severity.MINOR),
               fire("p-9", "pressure-low", T0 + 2 * S, Severity.MAJOR)])
    # a critical alert inhibits lower ones on the same device
    p.process([fire("gas-1", "lel-l2", T0 + 3 * S, Severity.CRITICAL),
               fire("gas-1", "lel-l1", T0 + 4 * S, Severity.WARNING)])
    got = {a.fingerprint: a.suppressed for a in list_alerts(p.engine, AlertFilter())[0]}
    assert got["p-9/event:fault"] == "" and got["p-9/pressure-low"] == "inhibited:sensor_fault"
    assert got["gas-1/lel-l2"] == "" and got["gas-1/lel-l1"] == "inhibited:critical"
    notified = [b["alert"]["fingerprint"] for e, b in events(p.engine) if e == "alert.firing"]
    assert notified[:2] == ["p-9/event:fault", "gas-1/lel-l2"]
    # the device's own offline alert (status:offline) inhibits its process alarms, not itself
    p.process([Finding("status:offline", "gas-2", "link", FindingState.FIRING, Severity.MINOR,
                       T0 + 5 * S, 0.0),
               fire("gas-2", "lel-l2", T0 + 6 * S, Severity.CRITICAL),
               Finding("battery-low", "gas-2", "battery", FindingState.FIRING, Severity.MINOR,
                       T0 + 7 * S, 3.1)])
    got = {a.fingerprint: a.suppressed for a in list_alerts(p.engine, AlertFilter())[0]}
    assert got["gas-2/status:offline"] == "" and got["gas-2/lel-l2"] == "inhibited:offline"
    assert got["gas-2/battery-low"] == ""  # device health is not a process alarm
    # the inhibition lifts when the device comes back
    state.offline.clear()
    p.tick(T0 + 10 * S)
    assert list_alerts(p.engine, AlertFilter(device="p-1"))[0][0].suppressed == ""


def test_case_auto_registration_routing_deadlines_and_escalation(db_url: str) -> None:
    from alerts.cases.model import Route
    cfg = CaseConfig(auto_register=Severity.MAJOR,
                     routes=(Route("G1", "gas_alarm", "燃气抢修队"),),
                     deadlines={"gas_alarm/critical": StageDeadlines(dispatch_ns=300 * S,
                                                                     handle_ns=3600 * S),
                                "minor": StageDeadlines(register_ns=600 * S)})
    p, lines = make(db_url, case=cfg)
    p.process([fire("gas-1", "lel", T0, Severity.CRITICAL)])
    p.process([fire("p-9", "low", T0, Severity.MINOR)])
    gas_case = list_alerts(p.engine, AlertFilter(device="gas-1"))[0][0].case_id
    held_case = list_alerts(p.engine, AlertFilter(device="p-9"))[0][0].case_id
    assert gas_case and held_case
    c, history, _ = case_with_history(p.engine, gas_case)
    assert c.state is CaseState.DISPATCHED and c.unit == "燃气抢修队"
    assert c.dispatch_due_ns == T0 + 300 * S and c.handle_due_ns == T0 + 3600 * S
    assert [(h.action, h.to_state, h.actor) for h in history] == [
        ("report", "reported", "system"), ("register", "registered", "system"),
        ("dispatch", "dispatched", "system")]
    h, _, _ = case_with_history(p.engine, held_case)
    assert h.state is CaseState.REPORTED and h.register_due_ns == T0 + 600 * S
    p.tick(T0 + 299 * S)
    assert "case.escalated" not in names(p.engine)
    p.tick(T0 + 301 * S)
    p.tick(T0 + 302 * S)  # escalated once per stage
    esc = [b for e, b in events(p.engine) if e == "case.escalated"]
    assert [(b["case"]["id"], b["stage"]) for b in esc] == [(gas_case, "dispatch")]
    p.tick(T0 + 601 * S)
    esc = [(b["case"]["id"], b["stage"]) for e, b in events(p.engine) if e == "case.escalated"]
    assert esc == [(gas_case, "dispatch"), (held_case, "register")]
    c, history, _ = case_with_history(p.engine, gas_case)
    assert c.overdue and c.escalated == "dispatch" and history[-1].note.startswith("超期")
    assert any(line.startswith("lifeline_case,") and "action=\"escalate\"" in line
               for line in lines)


def test_case_workflow_through_pipeline_and_illegal_actions(db_url: str) -> None:
    cfg = CaseConfig(verify_after_ns=300 * S,
                     deadlines={"critical": StageDeadlines(handle_ns=3600 * S)})
    p, _ = make(db_url, case=cfg)
    p.process([fire("gas-1", "lel", T0, Severity.CRITICAL)])
    case_id = list_alerts(p.engine, AlertFilter())[0][0].case_id
    assert case_id is not None
    with p.engine.begin() as conn:
        with pytest.raises(IllegalTransitionError, match="not allowed in state 'dispatched'"):
            p.cases.apply(conn, case_id, Action.CLOSE, "x", T0)
        p.cases.apply(conn, case_id, Action.ACCEPT, "dispatch", T0 + 60 * S, external_id="EXT-1")
        p.cases.apply(conn, case_id, Action.HANDLED, "dispatch", T0 + 600 * S)
    # readings still high after handling: verification fails into rework, then re-dispatch
    p.tick(T0 + 901 * S)
    c, history, _ = case_with_history(p.engine, case_id)
    assert c.state is CaseState.DISPATCHED and c.rework_count == 1 and c.external_id == "EXT-1"
    assert [h.action for h in history][-2:] == ["rework", "dispatch"]
    with p.engine.begin() as conn:
        p.cases.apply(conn, case_id, Action.START, "dispatch", T0 + 1000 * S)
        p.cases.apply(conn, case_id, Action.HANDLED, "dispatch", T0 + 1200 * S)
    p.process([clear("gas-1", "lel", T0 + 1250 * S)])
    p.tick(T0 + 1400 * S)  # normal only 150 s so far
    assert case_with_history(p.engine, case_id)[0].state is CaseState.HANDLED
    p.tick(T0 + 1551 * S)
    c, history, _ = case_with_history(p.engine, case_id)
    assert c.state is CaseState.CLOSED and c.handled_on_time
    assert [h.action for h in history][-2:] == ["verify", "close"]
    assert names(p.engine)[-1] == "case.closed"


def test_an_hour_of_readings_oscillating_around_the_limit_notifies_once(db_url: str) -> None:
    """Readings every 10 s around 50 %LEL through the real rule engine (no hysteresis)."""
    import numpy as np

    from devices.series import SeriesTable
    from ingest.batch import Batch
    from rules.engine import RuleEngine
    from rules.kinds import ThresholdRule

    series = SeriesTable()
    sid = series.id_for(DEVICES[0], "lel")
    rules = RuleEngine([ThresholdRule(id="lel-high", metric="lel", above=50.0,
                                      severity=Severity.CRITICAL)], series)
    p, _ = make(db_url, alert=AlertConfig())  # the defaults of the settings
    rng = np.random.default_rng(1)
    findings_total = 0
    for minute in range(60):
        ts = T0 + minute * 60 * S + np.arange(6, dtype=np.int64) * 10 * S
        values = 50.0 + rng.normal(0.0, 2.0, 6)
        findings = rules.evaluate(Batch.from_lists([sid] * 6, ts.tolist(), values.tolist(),
                                                   [0] * 6))
        findings_total += len(findings)
        p.process(findings)
        p.tick(int(ts[-1]) + 5 * S)
    assert findings_total > 60  # it really flapped
    assert [e for e in names(p.engine) if e.startswith("alert.")] == ["alert.firing"]
    assert names(p.engine).count("case.reported") == 1
    (a,), _ = list_alerts(p.engine, AlertFilter())
    assert a.flapping


def test_backfilled_old_findings_open_cases_on_the_service_clock(db_url: str) -> None:
    cfg = CaseConfig(deadlines={"critical": StageDeadlines(dispatch_ns=300 * S)})
    p, _ = make(db_url, case=cfg)  # the service clock says T0
    p.process([fire("gas-1", "lel", T0 - 2 * 86400 * S)])  # a reading from two days ago
    (a,), _ = list_alerts(p.engine, AlertFilter())
    assert a.fired_ns == T0 - 2 * 86400 * S  # the alert keeps the reading's time
    assert a.case_id is not None
    case, _, _ = case_with_history(p.engine, a.case_id)
    assert case.created_ns == T0 and case.dispatch_due_ns == T0 + 300 * S
    p.tick(T0 + S)
    assert "case.escalated" not in names(p.engine)


def test_late_findings_are_recorded_as_over_and_notify_nobody(db_url: str) -> None:
    p, lines = make(db_url)
    late = Finding("r1", "gas-1", "lel", FindingState.FIRING, Severity.CRITICAL, T0, 60.0,
                   late=True)
    assert len(p.process([late])) == 1
    (a,), _ = list_alerts(p.engine, AlertFilter(device="gas-1"))
    assert a.state is AlertState.RESOLVED and a.suppressed == "late" and a.case_id is None
    assert (a.fired_ns, a.resolved_ns) == (T0, T0)
    p.tick(T0 + 60 * S)  # the clock finds nothing to notify either
    assert names(p.engine) == [] and p.late == 1
    assert any(line.startswith("lifeline_alert,device=gas-1,rule=r1") and
               "state=\"resolved\"" in line for line in lines)
    # a live alert that is firing is left alone by a late finding
    p.process([fire("gas-2", "r1", T0 + 100 * S)])
    p.process([Finding("r1", "gas-2", "lel", FindingState.FIRING, Severity.CRITICAL,
                       T0 + 50 * S, 70.0, late=True)])
    (b,), _ = list_alerts(p.engine, AlertFilter(device="gas-2"))
    assert b.state is AlertState.FIRING and b.fired_ns == T0 + 100 * S and b.case_id is not None
    assert names(p.engine).count("alert.firing") == 1 and p.late == 2
    # the late record does not stop a later live episode from notifying and opening a case
    p.process([fire("gas-1", "r1", T0 + 4000 * S)])
    (c,), _ = list_alerts(p.engine, AlertFilter(device="gas-1"))
    assert c.state is AlertState.FIRING and c.suppressed == "" and c.case_id is not None
    assert names(p.engine).count("alert.firing") == 2
