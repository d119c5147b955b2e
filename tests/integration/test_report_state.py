"""The shift report's snapshot from the service database (SQLite and PostgreSQL), as of the
end of the period: now (what the API lists) and a past end (rebuilt from the history)."""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa

from alerts.cases.model import CaseState
from alerts.cases.ops import CaseFilter, case_with_history, list_cases
from alerts.cases.store import cases
from alerts.lifecycle.model import AlertState
from alerts.lifecycle.ops import AlertFilter, list_alerts
from devices.status import LinkStatus
from devices.store import DeviceFilter, DeviceStore
from devtools.harness import ManagedService
from lifeline.db import create_db_engine
from lifeline.report_state import database_snapshot
from rules.device_events import OFFLINE_RULE
from tests.e2e.report_shift import MIN, STORM_DEVICES, STORM_STAY_OFFLINE, script_shift

pytestmark = pytest.mark.integration


def test_snapshot_now_and_at_a_past_end(db_url: str, influxdb: ManagedService) -> None:
    end_ns = int(time.time()) * 10**9
    shift = script_shift(influxdb.info.url, f"state_{uuid.uuid4().hex[:8]}", db_url, end_ns)
    engine = create_db_engine(db_url)
    try:
        now = database_snapshot(engine, end_ns // 1_000_000)
        everything, _ = list_cases(engine, CaseFilter(limit=10_000), end_ns)
        open_ids = {c.id for c in everything if c.state not in (CaseState.CLOSED,
                                                                CaseState.CANCELLED)}
        overdue, _ = list_cases(engine, CaseFilter(overdue=True, limit=10_000), end_ns)
        assert {c.case_id for c in now.open_cases} == open_ids and open_ids
        assert {c.case_id for c in now.overdue} == {c.id for c in overdue if c.id in open_ids}
        assert {c.case_id: c.state for c in now.open_cases} == {
            c.id: c.state.value for c in everything if c.id in open_ids}
        _, firing = list_alerts(engine, AlertFilter(state=AlertState.FIRING, limit=1))
        assert len(now.firing) == firing
        _, offline = DeviceStore(engine).query(DeviceFilter(status=LinkStatus.OFFLINE,
                                                            enabled=True), limit=1)
        assert len(now.offline) == offline == STORM_STAY_OFFLINE
        assert {d.device for d in now.offline} == shift.offline_at_end

        # half an hour into the power cut: every storm device offline, its alert firing
        mid = (shift.storm_at_ns + 30 * MIN) // 1_000_000
        during = database_snapshot(engine, mid)
        assert len(during.offline) == STORM_DEVICES
        assert sum(1 for a in during.firing if a.rule == OFFLINE_RULE) == STORM_DEVICES
        # before the storm nobody was offline
        before = database_snapshot(engine, (shift.storm_at_ns - MIN) // 1_000_000)
        assert before.offline == []
        # a case closed after a past end was open at that end, in its state then
        with engine.connect() as conn:
            row = conn.execute(sa.select(cases.c.id, cases.c.created_ns, cases.c.closed_ns)
                               .where(cases.c.closed_ns.is_not(None))
                               .order_by(cases.c.closed_ns.desc())).first()
        assert row is not None
        at = (row.closed_ns - 1) // 1_000_000
        then = {c.case_id: c.state for c in database_snapshot(engine, at).open_cases}
        _, history, _ = case_with_history(engine, row.id)
        assert then[row.id] == [h.to_state for h in history if h.at_ns <= at * 1_000_000][-1]
        assert then[row.id] not in ("closed", "cancelled")
        assert row.id not in {c.case_id for c in now.open_cases}
    finally:
        engine.dispose()
