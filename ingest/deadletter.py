"""Dead-letter store: every message that could not be stored, with a reason."""

from __future__ import annotations

import builtins
import logging
import threading
import time
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
    payload_size: int  # bytes as received
    truncated: bool  # the stored payload is cut: not replayable


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
    # the message's size as received; a letter whose payload was cut is never replayed
    sa.Column("payload_size", sa.BigInteger, nullable=True),
    sa.Column("truncated", sa.Integer, nullable=False, server_default="0"),
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


_OLD_PAYLOAD_CAP = 65536  # letters stored before migration 3 were cut at this many bytes


def _add_payload_size(conn: Connection) -> None:
    columns = {c["name"] for c in sa.inspect(conn).get_columns("dead_letters")}
    if "payload_size" not in columns:
        conn.execute(sa.text("ALTER TABLE dead_letters ADD COLUMN payload_size BIGINT"))
    if "truncated" not in columns:
        conn.execute(sa.text(
            "ALTER TABLE dead_letters ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0"))
    # An old letter at exactly the old cap may have been cut: it is not replayed.
    conn.execute(sa.text(
        "UPDATE dead_letters SET payload_size = length(payload), "
        "truncated = CASE WHEN length(payload) >= :cap THEN 1 ELSE 0 END "
        "WHERE payload_size IS NULL"), {"cap": _OLD_PAYLOAD_CAP})


# (version, description, upgrade): applied by the service's migration runner.
def _create_spool_table(conn: Connection) -> None:
    from ingest.spool_db import create_spool_table  # noqa: PLC0415 - the spool's own module

    create_spool_table(conn)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "dead_letters table", _create_dead_letters),
    (2, "dead_letters.replay: replay requested by the CLI or API", _add_replay_column),
    (3, "dead_letters.payload_size, truncated: whole payloads, cut ones not replayed",
     _add_payload_size),
    (4, "ingest_spool: the spool in the database (active/standby)", _create_spool_table),
]


class DeadLetterLogLimiter:
    """Rate-limits the log line of each dead letter, per reason.

    In each window (``window_s``, from the first letter after a quiet spell) the
    first ``per_reason`` letters of a reason are logged one by one; the rest are
    counted, and when the window ends (a timer: no further letter is needed) one
    line per reason says how many were suppressed. A flood of garbage thus costs
    a few lines a minute, not one per message.
    """

    def __init__(self, per_reason: int = 10, window_s: float = 60.0) -> None:
        self.per_reason = per_reason
        self.window_s = window_s
        self._lock = threading.Lock()
        self._logged: Counter[str] = Counter()
        self._suppressed: Counter[str] = Counter()
        self._window_start: float | None = None
        self._timer: threading.Timer | None = None

    def letter(self, topic: str, reason: str, detail: str) -> None:
        """Log one dead letter, or count it as suppressed."""
        with self._lock:
            now = time.monotonic()
            if self._window_start is None or now - self._window_start >= self.window_s:
                self._end_window(now)
            if self._logged[reason] >= self.per_reason:
                self._suppressed[reason] += 1
                if self._timer is None:
                    assert self._window_start is not None
                    self._timer = threading.Timer(
                        max(0.0, self._window_start + self.window_s - now), self.flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._logged[reason] += 1
        log.info("dead-lettered topic=%r reason=%s detail=%r", topic, reason, detail)

    def flush(self) -> None:
        """End the window: log what was suppressed in it."""
        with self._lock:
            self._end_window(None)

    def close(self) -> None:
        """Log what is pending and stop the timer."""
        self.flush()

    def _end_window(self, now: float | None) -> None:
        elapsed = time.monotonic() - self._window_start if self._window_start is not None else 0
        for reason, count in sorted(self._suppressed.items()):
            log.warning("suppressed %d dead letters of reason %s in the last %.0f s "
                        "(first %d logged; `lifeline dlq list --reason %s` lists them)",
                        count, reason, elapsed, self.per_reason, reason)
        self._suppressed.clear()
        self._logged.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._window_start = now


class DeadLetterStore:
    """Durable dead letters in the service database, counted by reason.

    The schema is created by the migration runner (``MIGRATIONS``). The store
    keeps at most ``max_rows`` letters: the oldest are deleted beyond that and
    counted in ``evicted`` (and under ``dlq_overflow`` in ``counts``).
    Payloads are kept whole up to ``max_payload`` bytes (the service passes
    ``ingest.max_payload_bytes``, so only an ``oversized`` message is ever cut); a cut
    letter is marked ``truncated`` and is never replayed, since a replay would not be
    faithful.
    A replay is requested by marking letters (:meth:`request_replay`, from the
    CLI or the API, in any process); the running service takes them
    (:meth:`take_replays`) and feeds them through the decoder again.
    """

    def __init__(self, engine: Engine, *, max_payload: int = 16 * 1024 * 1024,
                 max_rows: int = 1_000_000) -> None:
        self._engine = engine
        self._max_payload = max_payload
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.evicted = 0
        self._rows: int | None = None
        self.log_limiter = DeadLetterLogLimiter()

    def add_many(self, letters: Iterable[DeadLetter]) -> int:
        """Store letters in one transaction; returns how many."""
        rows = [
            {
                "received_at_ns": dl.received_at_ns,
                "topic": dl.topic[:512],
                "payload": dl.payload[: self._max_payload],
                "payload_size": len(dl.payload),
                "truncated": int(len(dl.payload) > self._max_payload),
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
        for r in rows:
            self.log_limiter.letter(str(r["topic"]), str(r["reason"]), str(r["detail"]))
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
        # A cut payload would not be replayed faithfully.
        query = (dead_letters.update().values(replay=1).where(dead_letters.c.replay == 0)
                 .where(dead_letters.c.reason != Reason.WRITE_REJECTED.value)
                 .where(dead_letters.c.truncated == 0))
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
        payload_size=int(row.payload_size if row.payload_size is not None else len(row.payload)),
        truncated=bool(row.truncated),
    )
