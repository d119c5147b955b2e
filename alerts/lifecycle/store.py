"""The ``alerts`` table, its rows as :class:`Alert` and small queries (SQLAlchemy Core)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from alerts.errors import NotFoundError
from alerts.lifecycle.model import Alert, AlertState
from alerts.metadata import metadata
from rules.model import Severity

alerts = sa.Table(
    "alerts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("fingerprint", sa.String(200), nullable=False, unique=True),
    sa.Column("device_id", sa.String(64), nullable=False, index=True),
    sa.Column("rule_id", sa.String(128), nullable=False),
    sa.Column("metric", sa.String(100), nullable=False, default=""),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("value", sa.Float, nullable=False, default=0.0),
    sa.Column("device_type", sa.String(64), nullable=False, default=""),
    sa.Column("grid", sa.String(64), nullable=False, default=""),
    sa.Column("district", sa.String(64), nullable=False, default=""),
    sa.Column("unit", sa.String(128), nullable=False, default=""),
    sa.Column("first_seen_ns", sa.BigInteger, nullable=False),
    sa.Column("changed_ns", sa.BigInteger, nullable=False),
    sa.Column("fired_ns", sa.BigInteger),
    sa.Column("resolved_ns", sa.BigInteger),
    sa.Column("flapping", sa.Boolean, nullable=False, default=False),
    sa.Column("changes", sa.Text, nullable=False, default=""),
    sa.Column("suppressed", sa.String(64), nullable=False, default=""),
    sa.Column("notified_state", sa.String(16), nullable=False, default=""),
    sa.Column("notified_severity", sa.String(16), nullable=False, default=""),
    sa.Column("acked_by", sa.String(64), nullable=False, default=""),
    sa.Column("acked_ns", sa.BigInteger),
    sa.Column("ack_note", sa.String(1000), nullable=False, default=""),
    sa.Column("case_id", sa.Integer, index=True),
)


def alert_from_row(row: Row[Any]) -> Alert:
    """An :class:`Alert` from a row of ``alerts``."""
    m = row._mapping
    changes = tuple(int(x) for x in m["changes"].split(",") if x)
    return Alert(
        id=m["id"], fingerprint=m["fingerprint"], device_id=m["device_id"],
        rule_id=m["rule_id"], metric=m["metric"], state=AlertState(m["state"]),
        severity=Severity(m["severity"]), value=float(m["value"]),
        device_type=m["device_type"], grid=m["grid"], district=m["district"], unit=m["unit"],
        first_seen_ns=m["first_seen_ns"], changed_ns=m["changed_ns"], fired_ns=m["fired_ns"],
        resolved_ns=m["resolved_ns"], flapping=bool(m["flapping"]),
        suppressed=m["suppressed"], notified_state=m["notified_state"],
        notified_severity=m["notified_severity"], acked_by=m["acked_by"],
        acked_ns=m["acked_ns"], ack_note=m["ack_note"], case_id=m["case_id"], changes=changes,
    )


def get_alert(conn: Connection, alert_id: int) -> Alert:
    """The alert with ``alert_id``; NotFoundError otherwise."""
    row = conn.execute(sa.select(alerts).where(alerts.c.id == alert_id)).first()
    if row is None:
        raise NotFoundError(f"alert {alert_id} not found")
    return alert_from_row(row)


def open_alert_series(conn: Connection) -> list[tuple[str, str, str]]:
    """(rule id, device id, metric) of every pending or firing alert."""
    rows = conn.execute(sa.select(alerts.c.rule_id, alerts.c.device_id, alerts.c.metric).where(
        alerts.c.state.in_((AlertState.PENDING.value, AlertState.FIRING.value)))).all()
    return [(r, d, m) for r, d, m in rows]
