"""Dead-letter store: every message that could not be stored, with a reason."""

from __future__ import annotations

import builtins
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

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
    DLQ_OVERFLOW = "dlq_overflow"  # only as a counter: letters evicted by the size cap


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
    sa.Column("replay", sa.Integer, nullable=False, server_default="0", index=True),
)


def _create_dead_letters(conn: Connection) -> None:
    v1 = sa.Table(
        "dead_letters", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("received_at_ns", sa.BigInteger, nullable=False),
        sa.Column("topic", sa.String(512), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False, index=True),
        sa.Column("detail", sa.String(1024), nullable=False),
    )
    v1.create(conn, checkfirst=True)


def _add_replay_column(conn: Connection) -> None:
    columns = {c["name"] for c in sa.inspect(conn).get_columns("dead_letters")}
    if "replay" not in columns:
        conn.execute(sa.text(
            "ALTER TABLE dead_letters ADD COLUMN replay INTEGER NOT NULL DEFAULT 0"))
    sa.Index("ix_dead_letters_replay", dead_letters.c.replay).create(conn, checkfirst=True)


# (version, description, upgrade): applied by the service's migration runner.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "dead_letters table", _create_dead_letters),
    (2, "dead_letters.replay: replay requested by the CLI or API", _add_replay_column),
]


class DeadLetterStore:
    """Durable dead letters in the service database, counted by reason.

    The schema is created by the migration runner (``MIGRATIONS``). The store
    keeps at most ``max_rows`` letters: the oldest are deleted beyond that and
    counted in ``evicted`` (and under ``dlq_overflow`` in ``counts``).
    A replay is requested by marking letters (:meth:`request_replay`, from the
    CLI or the API, in any process); the running service takes them
    (:meth:`take_replays`) and feeds them through the decoder again.
    """

    def __init__(self, engine: Engine, *, max_payload: int = 65536,
                 max_rows: int = 1_000_000) -> None:
        self._engine = engine
        self._max_payload = max_payload
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.evicted = 0
        self._rows: int | None = None

    def add_many(self, letters: Iterable[DeadLetter]) -> int:
        """Store letters in one transaction; returns how many."""
        rows = [
            {
                "received_at_ns": dl.received_at_ns,
                "topic": dl.topic[:512],
                "payload": dl.payload[: self._max_payload],
                "reason": dl.reason.value,
                "detail": dl.detail[:1024],
                "replay": 0,
            }
            for dl in letters
        ]
        if not rows:
            return 0
        with self._lock, self._engine.begin() as conn:
            conn.execute(dead_letters.insert(), rows)
            if self._rows is None:
                self._rows = int(conn.execute(
                    sa.select(sa.func.count()).select_from(dead_letters)).scalar_one())
            else:
                self._rows += len(rows)
            if self._rows > self.max_rows:
                self._evict(conn)
        with self._lock:
            self.counts.update(str(r["reason"]) for r in rows)
        for r in rows[:5]:
            log.info("dead-lettered topic=%r reason=%s detail=%r",
                     r["topic"], r["reason"], r["detail"])
        return len(rows)

    def _evict(self, conn: Connection) -> None:
        assert self._rows is not None
        excess = self._rows - self.max_rows
        cutoff = conn.execute(
            sa.select(dead_letters.c.id).order_by(dead_letters.c.id).offset(excess - 1).limit(1)
        ).scalar_one_or_none()
        if cutoff is None:
            return
        deleted = conn.execute(dead_letters.delete().where(dead_letters.c.id <= cutoff)).rowcount
        self._rows -= deleted
        self.evicted += deleted
        self.counts[Reason.DLQ_OVERFLOW.value] += deleted
        log.warning("dead-letter store over its cap of %d: evicted the %d oldest letters "
                    "(%d evicted so far)", self.max_rows, deleted, self.evicted)

    def list(self, *, reason: str | None = None, limit: int = 100,
             before_id: int | None = None) -> list[StoredDeadLetter]:
        """Most recent dead letters first (``before_id``: page on from there)."""
        query = sa.select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
        if reason:
            query = query.where(dead_letters.c.reason == reason)
        if before_id is not None:
            query = query.where(dead_letters.c.id < before_id)
        with self._engine.connect() as conn:
            return [_stored(row) for row in conn.execute(query)]

    def get(self, letter_id: int) -> StoredDeadLetter | None:
        """One dead letter by id."""
        query = sa.select(dead_letters).where(dead_letters.c.id == letter_id)
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return _stored(row) if row is not None else None

    def request_replay(self, *, ids: Sequence[int] = (), reason: str | None = None,
                       limit: int = 10_000) -> int:
        """Mark letters (by id, or the newest ``limit`` of a reason) for replay; count marked."""
        # Lines InfluxDB refused are not MQTT messages: the decoder cannot take them again.
        query = (dead_letters.update().values(replay=1).where(dead_letters.c.replay == 0)
                 .where(dead_letters.c.reason != Reason.WRITE_REJECTED.value))
        if ids:
            query = query.where(dead_letters.c.id.in_(list(ids)))
        elif reason:
            newest = (sa.select(dead_letters.c.id).where(dead_letters.c.reason == reason)
                      .order_by(dead_letters.c.id.desc()).limit(limit))
            query = query.where(dead_letters.c.id.in_(newest))
        else:
            return 0
        with self._engine.begin() as conn:
            return int(conn.execute(query).rowcount)

    def take_replays(self, limit: int = 1000) -> builtins.list[StoredDeadLetter]:
        """Letters marked for replay, oldest first, now marked as in progress.

        The caller feeds them through the decoder again and calls
        :meth:`finish_replays` once the outcome is durable; a letter that fails
        again is dead-lettered anew (with a new id).
        """
        query = (sa.select(dead_letters).where(dead_letters.c.replay == 1)
                 .order_by(dead_letters.c.id).limit(limit))
        with self._engine.begin() as conn:
            rows: builtins.list[StoredDeadLetter] = [_stored(r) for r in conn.execute(query)]
            if rows:
                conn.execute(dead_letters.update().values(replay=2).where(
                    dead_letters.c.id.in_([r.id for r in rows])))
        return rows

    def finish_replays(self, ids: Sequence[int]) -> None:
        """Delete replayed letters (their new outcome is stored)."""
        with self._lock, self._engine.begin() as conn:
            deleted = conn.execute(dead_letters.delete().where(
                dead_letters.c.id.in_(list(ids)))).rowcount
            if self._rows is not None:
                self._rows -= deleted

    def reset_replays(self) -> int:
        """At start-up: replays interrupted by a stop are requested again."""
        with self._engine.begin() as conn:
            return int(conn.execute(dead_letters.update().values(replay=1)
                                    .where(dead_letters.c.replay == 2)).rowcount)

    def total(self, reason: str | None = None) -> int:
        """How many letters are stored (of ``reason``)."""
        query = sa.select(sa.func.count()).select_from(dead_letters)
        if reason:
            query = query.where(dead_letters.c.reason == reason)
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def count(self) -> dict[str, int]:
        """Stored dead letters by reason."""
        query = sa.select(dead_letters.c.reason, sa.func.count()).group_by(dead_letters.c.reason)
        with self._engine.connect() as conn:
            return {str(r): int(n) for r, n in conn.execute(query)}


def _stored(row: sa.Row[Any]) -> StoredDeadLetter:
    return StoredDeadLetter(
        id=row.id,
        letter=DeadLetter(
            topic=row.topic,
            payload=bytes(row.payload),
            reason=Reason(row.reason),
            detail=row.detail,
            received_at_ns=row.received_at_ns,
        ),
    )
