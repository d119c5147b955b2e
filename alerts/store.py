"""Row conversions and small queries shared by the alerts modules (SQLAlchemy Core)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from alerts.errors import NotFoundError
from alerts.model import (
    Alert,
    AlertState,
    Case,
    CaseState,
    Delivery,
    DeliveryStatus,
    HistoryEntry,
    Silence,
    SilenceKind,
)
from alerts.schema import alerts, case_history, cases, order_key, outbox, silences
from rules.model import Severity


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


def case_from_row(row: Row[Any]) -> Case:
    """A :class:`Case` from a row of ``cases``."""
    m = dict(row._mapping)
    m["state"] = CaseState(m["state"])
    m["severity"] = Severity(m["severity"])
    m["overdue"] = bool(m["overdue"])
    if m["handled_on_time"] is not None:
        m["handled_on_time"] = bool(m["handled_on_time"])
    return Case(**m)


def silence_from_row(row: Row[Any]) -> Silence:
    """A :class:`Silence` from a row of ``silences``."""
    m = row._mapping
    return Silence(id=m["id"], kind=SilenceKind(m["kind"]), matchers=orjson.loads(m["matchers"]),
                   starts_ns=m["starts_ns"], ends_ns=m["ends_ns"], created_by=m["created_by"],
                   comment=m["comment"], created_ns=m["created_ns"])


def delivery_from_row(row: Row[Any]) -> Delivery:
    """A :class:`Delivery` from a row of the outbox."""
    m = row._mapping
    return Delivery(
        id=m["id"], delivery_id=m["delivery_id"], event_id=m["event_id"], event=m["event"],
        payload=orjson.loads(m["payload"]), status=DeliveryStatus(m["status"]),
        attempts=m["attempts"], created_ns=m["created_ns"], next_attempt_ns=m["next_attempt_ns"],
        last_error=m["last_error"], last_status=m["last_status"],
        delivered_ns=m["delivered_ns"], delivered_via=m["delivered_via"], case_id=m["case_id"],
    )


def get_alert(conn: Connection, alert_id: int) -> Alert:
    """The alert with ``alert_id``; NotFoundError otherwise."""
    row = conn.execute(sa.select(alerts).where(alerts.c.id == alert_id)).first()
    if row is None:
        raise NotFoundError(f"alert {alert_id} not found")
    return alert_from_row(row)


def get_case(conn: Connection, case_id: int, *, for_update: bool = False) -> Case:
    """The case with ``case_id``; NotFoundError otherwise."""
    query = sa.select(cases).where(cases.c.id == case_id)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFoundError(f"case {case_id} not found")
    return case_from_row(row)


def case_history_of(conn: Connection, case_id: int) -> list[HistoryEntry]:
    """The audit history of a case, oldest first."""
    rows = conn.execute(sa.select(case_history).where(case_history.c.case_id == case_id)
                        .order_by(case_history.c.id))
    return [HistoryEntry(r.at_ns, r.actor, r.action, r.from_state, r.to_state, r.note)
            for r in rows]


def add_history(conn: Connection, case_id: int, at_ns: int, actor: str, action: str,
                from_state: str, to_state: str, note: str = "") -> int:
    """Append one audit line; returns its point time for ``lifeline_case``, kept with it.

    That is the line's time, or one nanosecond after the case's previous point when that
    is not earlier, moved on to the next nanosecond no other line holds: strictly
    increasing per case, so "the last row of a case" is its current state even when
    several changes share one instant (register and dispatch, verify and close), and never
    the point of another case, so two cases changing at one instant with the same tags do
    not overwrite each other in InfluxDB. A re-write of the line uses the stored time."""
    previous = conn.execute(sa.select(sa.func.max(case_history.c.point_ns))
                            .where(case_history.c.case_id == case_id)).scalar()
    point = at_ns if previous is None else max(at_ns, int(previous) + 1)
    taken = set(conn.execute(sa.select(case_history.c.point_ns).where(
        case_history.c.point_ns >= point, case_history.c.point_ns < point + 1000)).scalars())
    while point in taken:  # another case's line at this instant
        point += 1
    conn.execute(case_history.insert().values(
        case_id=case_id, at_ns=at_ns, actor=actor[:100], action=action, from_state=from_state,
        to_state=to_state, note=note[:2000], point_ns=point))
    return point


def enqueue(conn: Connection, event: str, payload: dict[str, Any], now_ns: int,
            case_id: int | None = None) -> str:
    """Put an event in the outbox, inside the caller's transaction; returns the delivery id.

    Events of one case (or of one alert without a case) are delivered in the order they
    are put here (see :func:`alerts.schema.order_key`)."""
    delivery_id = str(uuid.uuid4())
    conn.execute(outbox.insert().values(
        delivery_id=delivery_id, event_id=str(uuid.uuid4()), event=event,
        payload=orjson.dumps(payload).decode(), status=DeliveryStatus.PENDING.value,
        attempts=0, created_ns=now_ns, next_attempt_ns=now_ns, last_error="",
        delivered_via="", case_id=case_id, order_key=order_key(case_id, payload)))
    return delivery_id


def active_silences(conn: Connection, now_ns: int) -> list[Silence]:
    """Silences and maintenance windows in force at ``now_ns``."""
    rows = conn.execute(sa.select(silences).where(silences.c.starts_ns <= now_ns,
                                                  silences.c.ends_ns > now_ns))
    return [silence_from_row(r) for r in rows]


def open_alert_series(conn: Connection) -> list[tuple[str, str, str]]:
    """(rule id, device id, metric) of every pending or firing alert."""
    rows = conn.execute(sa.select(alerts.c.rule_id, alerts.c.device_id, alerts.c.metric).where(
        alerts.c.state.in_((AlertState.PENDING.value, AlertState.FIRING.value)))).all()
    return [(r, d, m) for r, d, m in rows]
