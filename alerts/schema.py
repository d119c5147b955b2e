"""Tables of alerts, cases, silences and the webhook outbox, and their migrations."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

metadata = sa.MetaData()

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

silences = sa.Table(
    "silences", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("matchers", sa.Text, nullable=False),
    sa.Column("starts_ns", sa.BigInteger, nullable=False),
    sa.Column("ends_ns", sa.BigInteger, nullable=False, index=True),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("comment", sa.String(1000), nullable=False),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
)

outbox = sa.Table(
    "webhook_outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(64), nullable=False, unique=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("event", sa.String(32), nullable=False, index=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    sa.Column("next_attempt_ns", sa.BigInteger, nullable=False, index=True),
    sa.Column("last_error", sa.String(1000), nullable=False, default=""),
    sa.Column("last_status", sa.Integer),
    sa.Column("delivered_ns", sa.BigInteger),
    sa.Column("delivered_via", sa.String(16), nullable=False, default=""),
    sa.Column("case_id", sa.Integer, index=True),
    # events of one key are delivered one after the other, in id order ("" = unordered)
    sa.Column("order_key", sa.String(64), nullable=False, server_default=""),
    sa.Index("ix_webhook_outbox_order", "order_key", "status", "id"),
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


def _create_all(conn: Connection) -> None:
    metadata.create_all(conn, tables=[alerts, cases, case_history, silences, outbox,
                                      callback_keys])


def order_key(case_id: int | None, payload: Mapping[str, Any]) -> str:
    """The delivery order key of an event: ``case:<id>``, else ``alert:<id>`` of an alert
    event without a case, else "" (no order)."""
    if case_id is not None:
        return f"case:{case_id}"
    alert = payload.get("alert")
    if isinstance(alert, Mapping) and alert.get("id") is not None:
        return f"alert:{alert['id']}"
    return ""


def _add_order_key(conn: Connection) -> None:
    columns = {c["name"] for c in sa.inspect(conn).get_columns("webhook_outbox")}
    if "order_key" not in columns:
        conn.execute(sa.text("ALTER TABLE webhook_outbox "
                             "ADD COLUMN order_key VARCHAR(64) NOT NULL DEFAULT ''"))
    for index in outbox.indexes:
        if index.name == "ix_webhook_outbox_order":
            index.create(conn, checkfirst=True)
    conn.execute(outbox.update().where(outbox.c.order_key == "", outbox.c.case_id.is_not(None))
                 .values(order_key=sa.literal("case:") + sa.cast(outbox.c.case_id, sa.String)))
    rows = conn.execute(sa.select(outbox.c.id, outbox.c.payload).where(
        outbox.c.order_key == "", outbox.c.case_id.is_(None))).all()
    for row_id, payload in rows:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        key = order_key(None, doc) if isinstance(doc, dict) else ""
        if key:
            conn.execute(outbox.update().where(outbox.c.id == row_id).values(order_key=key))


def _add_callback_replay(conn: Connection) -> None:
    columns = {c["name"] for c in sa.inspect(conn).get_columns("case_callback_keys")}
    if "status" not in columns:
        conn.execute(sa.text("ALTER TABLE case_callback_keys "
                             "ADD COLUMN status INTEGER NOT NULL DEFAULT 200"))
    metadata.create_all(conn, tables=[callback_nonces])


def _add_history_point(conn: Connection) -> None:
    columns = {c["name"] for c in sa.inspect(conn).get_columns("case_history")}
    if "point_ns" not in columns:
        conn.execute(sa.text("ALTER TABLE case_history ADD COLUMN point_ns BIGINT"))
    # older lines keep no point (NULL): new ones are placed apart from each other
    conn.execute(sa.text("CREATE UNIQUE INDEX IF NOT EXISTS ix_case_history_point_ns "
                         "ON case_history (point_ns)"))


# (version, description, upgrade): applied by the service's migration runner.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "alerts, cases, case history, silences, webhook outbox, callback keys", _create_all),
    (2, "webhook_outbox.order_key: events of one case (or alert) delivered in order",
     _add_order_key),
    (3, "callback keys keep the first answer's status; seen callback signatures",
     _add_callback_replay),
    (4, "case_history.point_ns: lifeline_case points never shared by two cases",
     _add_history_point),
]
