"""The ``webhook_outbox`` table, its rows as :class:`Delivery`, order keys and
:func:`enqueue` (inside the caller's transaction).

A row is for one target: ``""`` is the dispatch webhook, any other value names a
notification channel (:mod:`alerts.notify`); a :class:`Fanout` given to :func:`enqueue`
adds the channel rows of an event in the same transaction."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from alerts.delivery.model import Delivery, DeliveryStatus
from alerts.metadata import metadata

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
    # "" = the dispatch webhook; else the notification channel's name (ordered per target)
    sa.Column("target", sa.String(64), nullable=False, server_default=""),
    sa.Index("ix_webhook_outbox_target", "target", "status", "next_attempt_ns"),
)


@dataclass(frozen=True, slots=True)
class ExtraTarget:
    """One more outbox row for an event: ``target`` (a channel), sent at ``due_ns``; its
    payload gains ``notify`` (route details, e.g. an escalation step); ``key_suffix``
    separates its order key (escalations do not hold up the channel's other rows)."""

    target: str
    due_ns: int
    notify: dict[str, Any]
    key_suffix: str = ""


class Fanout(Protocol):
    """Decides which channels also get an event (evaluated when it is enqueued)."""

    def targets(self, event: str, payload: Mapping[str, Any],
                now_ns: int) -> Sequence[ExtraTarget]:
        """The extra rows for ``event``."""
        ...


def order_key(case_id: int | None, payload: Mapping[str, Any]) -> str:
    """The delivery order key of an event: ``case:<id>``, else ``alert:<id>`` of an alert
    event without a case, else "" (no order)."""
    if case_id is not None:
        return f"case:{case_id}"
    alert = payload.get("alert")
    if isinstance(alert, Mapping) and alert.get("id") is not None:
        return f"alert:{alert['id']}"
    return ""


def delivery_from_row(row: Row[Any]) -> Delivery:
    """A :class:`Delivery` from a row of the outbox."""
    m = row._mapping
    return Delivery(
        id=m["id"], delivery_id=m["delivery_id"], event_id=m["event_id"], event=m["event"],
        payload=orjson.loads(m["payload"]), status=DeliveryStatus(m["status"]),
        attempts=m["attempts"], created_ns=m["created_ns"], next_attempt_ns=m["next_attempt_ns"],
        last_error=m["last_error"], last_status=m["last_status"],
        delivered_ns=m["delivered_ns"], delivered_via=m["delivered_via"], case_id=m["case_id"],
        target=m["target"],
    )


def enqueue(conn: Connection, event: str, payload: dict[str, Any], now_ns: int,
            case_id: int | None = None, fanout: Fanout | None = None) -> str:
    """Put an event in the outbox, inside the caller's transaction; returns the delivery id
    (of the webhook row).

    Events of one case (or of one alert without a case) are delivered in the order they
    are put here (see :func:`order_key`), per target. ``fanout`` adds a row per channel
    the event is routed to."""
    delivery_id = str(uuid.uuid4())
    event_id = str(uuid.uuid4())
    key = order_key(case_id, payload)
    conn.execute(outbox.insert().values(
        delivery_id=delivery_id, event_id=event_id, event=event,
        payload=orjson.dumps(payload).decode(), status=DeliveryStatus.PENDING.value,
        attempts=0, created_ns=now_ns, next_attempt_ns=now_ns, last_error="",
        delivered_via="", case_id=case_id, order_key=key, target=""))
    for extra in fanout.targets(event, payload, now_ns) if fanout is not None else ():
        conn.execute(outbox.insert().values(
            delivery_id=str(uuid.uuid4()), event_id=event_id, event=event,
            payload=orjson.dumps({**payload, "notify": extra.notify}).decode(),
            status=DeliveryStatus.PENDING.value, attempts=0, created_ns=now_ns,
            next_attempt_ns=extra.due_ns, last_error="", delivered_via="", case_id=case_id,
            order_key=key + extra.key_suffix, target=extra.target))
    return delivery_id
