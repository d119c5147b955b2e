"""The shift report's snapshot and KPIs from the service database (the source of truth).

The handover must list everything still open at the end of the shift, however old. The
database holds every case, alert and device with its current state and its history, so the
state *as of the end of the period* is read from it:

- cases: created by the end and not closed or cancelled by then, in the state of their
  last history entry at or before the end; overdue when escalated (超期) by then or past a
  deadline at the end — the same rule as ``GET /api/v1/cases?overdue=true``;
- alerts: fired by the end and not resolved by then (an alert that fired, resolved and
  fired again counts from its latest firing);
- devices: enabled and not deleted, offline at the end: their current status when it
  began by then, else their last recorded online/offline change by then.

For a period ending now this equals what the API lists. KPIs are those of the cases created
in each period, as ``GET /api/v1/kpi?start=…&end=…`` computes them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.cases.deadlines import overdue_stage
from alerts.cases.kpi import KpiScope, compute
from alerts.cases.model import CaseState
from alerts.cases.store import case_from_row, case_history, cases
from alerts.lifecycle.store import alerts
from dashboards.definitions import KPIS
from dashboards.report import AlertRow, CaseRow, DeviceRow, Kpi, Snapshot
from devices.store import changes_table, devices_table, status_table
from lifeline.db import DatabaseError, create_db_engine
from lifeline.settings import Settings

log = logging.getLogger(__name__)

_DONE = (CaseState.CLOSED.value, CaseState.CANCELLED.value)
_LINK = ("online", "offline")


def _ms(ns: int | None) -> int | None:
    return None if ns is None else ns // 1_000_000


def report_engine(settings: Settings, *, required: bool) -> Engine | None:
    """The service database to read, or None when there is none to read.

    A configured ``database.url`` must answer; the default SQLite file is used when it
    exists and holds the cases table. Nothing is created or migrated: the report only reads.
    """
    url = settings.database.url
    if not url:
        path = Path(settings.run_dir) / "lifeline.db"
        if not path.is_file():
            if required:
                raise DatabaseError(f"no service database: {path} does not exist "
                                    "(set database.url)")
            return None
        url = f"sqlite:///{path}"
    engine = create_db_engine(url)
    try:
        has_cases = sa.inspect(engine).has_table("cases")
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(f"database {engine.url.render_as_string()}: {exc}") from exc
    if not has_cases:
        engine.dispose()
        if required or settings.database.url:
            raise DatabaseError(f"database {engine.url.render_as_string()}: no cases table "
                                "(has the service run against it?)")
        return None
    return engine


def database_snapshot(engine: Engine, end_ms: int) -> Snapshot:
    """Open and overdue cases, firing alerts and offline devices as of ``end_ms``."""
    end_ns = end_ms * 1_000_000
    snap = Snapshot("database", end_ms)
    live = sa.and_(cases.c.created_ns <= end_ns,
                   sa.or_(cases.c.closed_ns.is_(None), cases.c.closed_ns > end_ns),
                   sa.or_(cases.c.cancelled_ns.is_(None), cases.c.cancelled_ns > end_ns))
    try:
        with engine.connect() as conn:
            rows = [case_from_row(r) for r in conn.execute(
                sa.select(cases).where(live).order_by(cases.c.id))]
            history = conn.execute(
                sa.select(case_history.c.case_id, case_history.c.action,
                          case_history.c.to_state, case_history.c.at_ns)
                .select_from(case_history.join(cases, cases.c.id == case_history.c.case_id))
                .where(live, case_history.c.at_ns <= end_ns)
                .order_by(case_history.c.case_id, case_history.c.at_ns, case_history.c.id)
            ).all()
            fired = conn.execute(sa.select(alerts).where(
                alerts.c.fired_ns <= end_ns,
                sa.or_(alerts.c.state == "firing", alerts.c.resolved_ns > end_ns))
                .order_by(alerts.c.rule_id, alerts.c.device_id)).all()
            link = conn.execute(
                sa.select(changes_table.c.device_id, changes_table.c.change,
                          changes_table.c.reason, changes_table.c.ts_ns)
                .where(changes_table.c.change.in_(_LINK), changes_table.c.ts_ns <= end_ns)
                .order_by(changes_table.c.ts_ns, changes_table.c.id)).all()
            status = conn.execute(sa.select(status_table)).all()
            devices = {r.id: r for r in conn.execute(sa.select(devices_table).where(
                devices_table.c.deleted.is_(False), devices_table.c.enabled.is_(True)))}
    except sa.exc.SQLAlchemyError as exc:
        raise DatabaseError(f"database {engine.url.render_as_string()}: {exc}") from exc
    state: dict[int, str] = {}
    escalated: set[int] = set()
    for case_id, action, to_state, _ in history:
        if to_state:
            state[case_id] = to_state
        if action == "escalate":
            escalated.add(case_id)
    for c in rows:
        at_end = state.get(c.id, c.state.value)
        if at_end in _DONE:
            continue
        case = dataclasses.replace(c, state=CaseState(at_end))
        overdue = c.id in escalated or overdue_stage(case, end_ns) is not None
        snap.open_cases.append(CaseRow(c.id, at_end, c.severity.value, c.grid, c.unit, overdue,
                                       _ms(c.created_ns), _ms(c.updated_ns)))
    for a in fired:
        snap.firing.append(AlertRow(a.device_id, a.rule_id, a.severity, a.grid, a.device_type,
                                    _ms(a.fired_ns)))
    last: dict[str, tuple[str, str, int]] = {}
    for device_id, change, reason, ts_ns in link:  # the recorded changes up to the end
        last[device_id] = (change, reason, ts_ns)
    for r in status:  # the current status holds since before the end: it is the state then
        if r.since_ns <= end_ns:
            if r.link in _LINK:
                last[r.device_id] = (r.link, r.reason, r.since_ns)
            else:
                last.pop(r.device_id, None)
    for device_id in sorted(last):
        change, reason, ts_ns = last[device_id]
        d = devices.get(device_id)
        if change == "offline" and d is not None:
            snap.offline.append(DeviceRow(device_id, d.type, d.grid, reason, _ms(ts_ns)))
    return snap


def database_kpis(engine: Engine, end_ms: int, period_ms: int) -> list[Kpi]:
    """The city-wide KPIs of the cases created in the period and in the period before."""
    end_ns, period_ns = end_ms * 1_000_000, period_ms * 1_000_000
    try:
        now = compute(engine, end_ns - period_ns, end_ns, KpiScope.ALL)
        before = compute(engine, end_ns - 2 * period_ns, end_ns - period_ns, KpiScope.ALL)
    except sa.exc.SQLAlchemyError as exc:
        raise DatabaseError(f"database {engine.url.render_as_string()}: {exc}") from exc
    out = []
    for name, title in KPIS:
        cur = getattr(now[0], name) if now else None
        prev = getattr(before[0], name) if before else None
        out.append(Kpi(name, title, cur, prev))
    return out
