"""Alert operations behind the API: filtered listings, acknowledgement."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.lifecycle.model import Alert, AlertState
from alerts.lifecycle.store import alert_from_row, alerts, get_alert
from rules.model import Severity

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Filter of alert listings."""

    state: AlertState | None = None
    device: str | None = None
    grid: str | None = None
    rule: str | None = None
    severity: Severity | None = None
    acked: bool | None = None
    case_id: int | None = None
    limit: int = 100
    offset: int = 0


def list_alerts(engine: Engine, f: AlertFilter) -> tuple[list[Alert], int]:
    """Alerts matching ``f``, most recently changed first, and the total count."""
    cond: list[Any] = []
    if f.state is not None:
        cond.append(alerts.c.state == f.state.value)
    if f.device:
        cond.append(alerts.c.device_id == f.device)
    if f.grid:
        cond.append(alerts.c.grid == f.grid)
    if f.rule:
        cond.append(alerts.c.rule_id == f.rule)
    if f.severity is not None:
        cond.append(alerts.c.severity == f.severity.value)
    if f.acked is not None:
        cond.append(alerts.c.acked_ns.is_not(None) if f.acked else alerts.c.acked_ns.is_(None))
    if f.case_id is not None:
        cond.append(alerts.c.case_id == f.case_id)

    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(alerts).where(*cond)
                             ).scalar_one()
        rows = conn.execute(sa.select(alerts).where(*cond)
                            .order_by(alerts.c.changed_ns.desc(), alerts.c.id.desc())
                            .limit(f.limit).offset(f.offset))
        return [alert_from_row(r) for r in rows], int(total)


def ack_alert(engine: Engine, alert_id: int, who: str, note: str, now_ns: int) -> Alert:
    """Acknowledge an alert (who, when, note)."""
    with engine.begin() as conn:
        get_alert(conn, alert_id)
        conn.execute(alerts.update().where(alerts.c.id == alert_id).values(
            acked_by=who[:64], acked_ns=now_ns, ack_note=note[:1000]))
        log.info("alert %d acknowledged by %s", alert_id, who)
        return get_alert(conn, alert_id)


def unack_alert(engine: Engine, alert_id: int, who: str) -> Alert:
    """Remove an acknowledgement."""
    with engine.begin() as conn:
        get_alert(conn, alert_id)
        conn.execute(alerts.update().where(alerts.c.id == alert_id).values(
            acked_by="", acked_ns=None, ack_note=""))
        log.info("alert %d acknowledgement removed by %s", alert_id, who)
        return get_alert(conn, alert_id)
