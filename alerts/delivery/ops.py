"""Outbox operations behind the API: list deliveries, resend one."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.delivery.model import Delivery, DeliveryStatus
from alerts.delivery.store import delivery_from_row, outbox
from alerts.errors import NotFoundError

log = logging.getLogger(__name__)


def list_deliveries(engine: Engine, *, status: DeliveryStatus | None = None,
                    event: str | None = None, case_id: int | None = None,
                    target: str | None = None,
                    limit: int = 100, offset: int = 0) -> tuple[list[Delivery], int]:
    """Outbox rows, newest first, and the total count of the filter (``target``: ""
    the dispatch webhook's rows, else a notification channel's)."""
    cond = []
    if status is not None:
        cond.append(outbox.c.status == status.value)
    if event:
        cond.append(outbox.c.event == event)
    if case_id is not None:
        cond.append(outbox.c.case_id == case_id)
    if target is not None:
        cond.append(outbox.c.target == target)
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(outbox).where(*cond)
                             ).scalar_one()
        rows = conn.execute(sa.select(outbox).where(*cond).order_by(outbox.c.id.desc())
                            .limit(limit).offset(offset))
        return [delivery_from_row(r) for r in rows], int(total)


def resend(engine: Engine, row_id: int, now_ns: int) -> Delivery:
    """Queue a (dead or delivered) row again with the same delivery id; restarts its age.

    The row keeps its place in its order key: later rows of the key not started yet wait
    for it (those delivered already stay delivered)."""
    with engine.begin() as conn:
        found = conn.execute(outbox.update().where(outbox.c.id == row_id).values(
            status=DeliveryStatus.PENDING.value, attempts=0, next_attempt_ns=now_ns,
            created_ns=now_ns, last_error="")).rowcount
        if not found:
            raise NotFoundError(f"delivery {row_id} not found")
        row = conn.execute(sa.select(outbox).where(outbox.c.id == row_id)).one()
    log.info("webhook delivery %d (%s) queued again", row_id, row.delivery_id)
    return delivery_from_row(row)
