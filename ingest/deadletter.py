"""Dead-letter store: every message that could not be stored, with a reason."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)


class Reason(StrEnum):
    """Why a message was dead-lettered."""

    NOT_JSON = "not_json"
    BAD_SHAPE = "bad_shape"
    NON_FINITE = "non_finite"
    BAD_VALUE = "bad_value"
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_METRIC = "unknown_metric"
    BAD_UNIT = "bad_unit"
    OVERSIZED = "oversized"
    BAD_TIMESTAMP = "bad_timestamp"
    TS_FUTURE = "ts_future"
    TS_PAST = "ts_past"
    BAD_TOPIC = "bad_topic"
    WRITE_REJECTED = "write_rejected"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message (or the part of it) that was not stored, and why."""

    topic: str
    payload: bytes
    reason: Reason
    detail: str
    received_at_ns: int


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter as kept in the store."""

    id: int
    letter: DeadLetter


metadata = sa.MetaData()
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at_ns", sa.BigInteger, nullable=False),
    sa.Column("topic", sa.String(512), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False, index=True),
    sa.Column("detail", sa.String(1024), nullable=False),
)


def _create_dead_letters(conn: Connection) -> None:
    metadata.create_all(conn, tables=[dead_letters])


# (version, description, upgrade): applied by the service's migration runner.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "dead_letters table", _create_dead_letters),
]


class DeadLetterStore:
    """Durable dead letters in the service database, counted by reason.

    The schema is created by the migration runner (``MIGRATIONS``).
    """

    def __init__(self, engine: Engine, *, max_payload: int = 65536) -> None:
        self._engine = engine
        self._max_payload = max_payload
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add_many(self, letters: Iterable[DeadLetter]) -> int:
        """Store letters in one transaction; returns how many."""
        rows = [
            {
                "received_at_ns": dl.received_at_ns,
                "topic": dl.topic[:512],
                "payload": dl.payload[: self._max_payload],
                "reason": dl.reason.value,
                "detail": dl.detail[:1024],
            }
            for dl in letters
        ]
        if not rows:
            return 0
        with self._engine.begin() as conn:
            conn.execute(dead_letters.insert(), rows)
        with self._lock:
            self.counts.update(str(r["reason"]) for r in rows)
        for r in rows[:5]:
            log.info("dead-lettered topic=%s reason=%s detail=%s",
                     r["topic"], r["reason"], r["detail"])
        return len(rows)

    def list(self, *, reason: str | None = None, limit: int = 100) -> list[StoredDeadLetter]:
        """Most recent dead letters first."""
        query = sa.select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
        if reason:
            query = query.where(dead_letters.c.reason == reason)
        with self._engine.connect() as conn:
            return [
                StoredDeadLetter(
                    id=row.id,
                    letter=DeadLetter(
                        topic=row.topic,
                        payload=bytes(row.payload),
                        reason=Reason(row.reason),
                        detail=row.detail,
                        received_at_ns=row.received_at_ns,
                    ),
                )
                for row in conn.execute(query)
            ]

    def count(self) -> dict[str, int]:
        """Stored dead letters by reason."""
        query = sa.select(dead_letters.c.reason, sa.func.count()).group_by(dead_letters.c.reason)
        with self._engine.connect() as conn:
            return {str(r): int(n) for r, n in conn.execute(query)}
