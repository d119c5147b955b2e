"""The migration history of the alerts tables (component ``alerts``): every table is
declared by its concept's ``store`` module, on the one :data:`alerts.metadata.metadata`;
the versions and their upgrades stay here, in one place, so an existing database migrates
exactly as before."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alerts.cases.store import callback_keys, callback_nonces, case_history, cases
from alerts.delivery.store import order_key, outbox
from alerts.lifecycle.store import alerts
from alerts.metadata import metadata
from alerts.notify.store import ack_links
from alerts.silences.store import silences


def _create_all(conn: Connection) -> None:
    metadata.create_all(conn, tables=[alerts, cases, case_history, silences, outbox,
                                      callback_keys])


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


def _add_target(conn: Connection) -> None:
    columns = {c["name"] for c in sa.inspect(conn).get_columns("webhook_outbox")}
    if "target" not in columns:
        conn.execute(sa.text("ALTER TABLE webhook_outbox "
                             "ADD COLUMN target VARCHAR(64) NOT NULL DEFAULT ''"))
    for index in outbox.indexes:
        if index.name == "ix_webhook_outbox_target":
            index.create(conn, checkfirst=True)
    metadata.create_all(conn, tables=[ack_links])


# (version, description, upgrade): applied by the service's migration runner.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "alerts, cases, case history, silences, webhook outbox, callback keys", _create_all),
    (2, "webhook_outbox.order_key: events of one case (or alert) delivered in order",
     _add_order_key),
    (3, "callback keys keep the first answer's status; seen callback signatures",
     _add_callback_replay),
    (4, "case_history.point_ns: lifeline_case points never shared by two cases",
     _add_history_point),
    (5, "webhook_outbox.target: notification channel rows beside the webhook's; "
        "used acknowledge links", _add_target),
]
