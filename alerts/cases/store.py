"""Tables of cases, their audit history and the callback keys and signatures; rows as
:class:`Case`, small queries and the audit line writer (SQLAlchemy Core)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from alerts.cases.model import Case, CaseState, HistoryEntry
from alerts.errors import NotFoundError
from alerts.metadata import metadata
from rules.model import Severity

cases = sa.Table(
    "cases", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("title", sa.String(300), nullable=False, default=""),
    sa.Column("grid", sa.String(64), nullable=False, default=""),
    sa.Column("district", sa.String(64), nullable=False, default=""),
    sa.Column("device_type", sa.String(64), nullable=False, default=""),
    sa.Column("device_id", sa.String(64), nullable=False, default=""),
    sa.Column("unit", sa.String(128), nullable=False, default=""),
    sa.Column("group_key", sa.String(200), nullable=False, index=True),
    sa.Column("external_id", sa.String(128), nullable=False, default=""),
    sa.Column("created_ns", sa.BigInteger, nullable=False, index=True),
    sa.Column("updated_ns", sa.BigInteger, nullable=False),
    sa.Column("last_alert_ns", sa.BigInteger, nullable=False),
    sa.Column("registered_ns", sa.BigInteger),
    sa.Column("dispatched_ns", sa.BigInteger),
    sa.Column("accepted_ns", sa.BigInteger),
    sa.Column("handled_ns", sa.BigInteger),
    sa.Column("verified_ns", sa.BigInteger),
    sa.Column("closed_ns", sa.BigInteger),
    sa.Column("cancelled_ns", sa.BigInteger),
    sa.Column("register_due_ns", sa.BigInteger),
    sa.Column("dispatch_due_ns", sa.BigInteger),
    sa.Column("handle_due_ns", sa.BigInteger),
    sa.Column("verify_due_ns", sa.BigInteger),
    sa.Column("overdue", sa.Boolean, nullable=False, default=False),
    sa.Column("escalated", sa.String(100), nullable=False, default=""),
    sa.Column("handled_on_time", sa.Boolean),
    sa.Column("rework_count", sa.Integer, nullable=False, default=0),
    sa.Column("return_count", sa.Integer, nullable=False, default=0),
)

case_history = sa.Table(
    "case_history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False, index=True),
    sa.Column("at_ns", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("from_state", sa.String(16), nullable=False),
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("note", sa.String(2000), nullable=False, default=""),
    # the line's lifeline_case point time: unique over all cases (see store.add_history)
    sa.Column("point_ns", sa.BigInteger, nullable=True),
)

callback_keys = sa.Table(
    "case_callback_keys", metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("case_id", sa.Integer, nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    # the HTTP status of the first answer (200 applied, 409 refused by the workflow)
    sa.Column("status", sa.Integer, nullable=False, server_default="200"),
)

# signatures of signed callbacks seen within the replay window (one use each)
callback_nonces = sa.Table(
    "case_callback_nonces", metadata,
    sa.Column("signature", sa.String(64), primary_key=True),
    sa.Column("case_id", sa.Integer, nullable=False),
    sa.Column("signed_at", sa.BigInteger, nullable=False, index=True),  # epoch seconds
    sa.Column("seen_ns", sa.BigInteger, nullable=False),
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
