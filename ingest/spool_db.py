"""The spool in the service database: line-protocol chunks kept while InfluxDB is
unreachable, where every node of an active/standby group can read them.

Same contract as :class:`ingest.spool.Spool` (a bounded FIFO; :meth:`put` refuses what
does not fit and the writer then holds back acknowledgements), but the chunks are rows
of ``ingest_spool`` instead of files in the run directory: a leader whose machine is
lost leaves them to the node that takes over, which writes them to InfluxDB first
(docs/operations.md, "High availability"). On a fenced engine
(:func:`lifeline.fencing.install_fence`) a node that lost the lease can neither add nor
remove a chunk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ingest.errors import IngestError
from ingest.spool import ChunkIndex, SpoolChunk, SpoolError

log = logging.getLogger(__name__)

metadata = sa.MetaData()

spool_table = sa.Table(
    "ingest_spool",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("lines", sa.Text, nullable=False),
    sa.Column("line_count", sa.Integer, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
)


def create_spool_table(conn: Connection) -> None:
    """Migration: the ``ingest_spool`` table."""
    metadata.create_all(conn, tables=[spool_table])


class DatabaseSpool(ChunkIndex):
    """A bounded FIFO of line-protocol chunks in ``ingest_spool``.

    Sizes are counted from the table at start (chunks a previous leader left) and kept
    in memory after that: this node is the only writer while it leads.
    """

    def __init__(self, engine: Engine, max_bytes: int,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.engine = engine
        self._on_error = on_error
        t = spool_table.c
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.select(t.seq, t.size).order_by(t.seq)).all()
        except sa.exc.SQLAlchemyError as exc:
            raise SpoolError(f"database spool: {exc}") from exc
        super().__init__(max_bytes, [(int(r.seq), int(r.size)) for r in rows])
        if self._chunks:
            log.info("database spool: %d chunks (%d bytes) left by an earlier leader",
                     len(self._chunks), self._bytes)

    def put(self, lines: list[str]) -> bool:
        """Append a chunk; False (nothing stored) when it would exceed ``max_bytes`` or
        the database refuses (unreachable, or this node no longer leads)."""
        body = "\n".join(lines) + "\n"
        size = len(body.encode())
        with self._lock:
            if self._bytes + size > self.max_bytes:
                self.refused += 1
                return False
            try:
                with self.engine.begin() as conn:
                    seq = conn.execute(spool_table.insert().values(
                        lines=body, line_count=len(lines), size=size,
                        created_ns=time.time_ns()).returning(spool_table.c.seq)).scalar_one()
            except (sa.exc.SQLAlchemyError, IngestError) as exc:
                self._failed("cannot store a chunk", exc)
                return False
            except Exception as exc:  # NotLeader from the fence: nothing stored
                self._failed("chunk refused", exc)
                return False
            self._added(int(seq), size, len(lines))
            return True

    def peek(self) -> SpoolChunk | None:
        """The oldest chunk, or None when the spool is empty."""
        seq = self._oldest()
        if seq is None:
            return None
        t = spool_table.c
        try:
            with self.engine.connect() as conn:
                text = conn.execute(sa.select(t.lines).where(t.seq == seq)).scalar_one()
        except sa.exc.SQLAlchemyError as exc:
            raise SpoolError(f"database spool chunk {seq}: {exc}") from exc
        return SpoolChunk(seq, [line for line in str(text).split("\n") if line])

    def remove(self, seq: int) -> None:
        """Forget chunk ``seq`` once it is stored (must be the oldest). Raises
        :class:`SpoolError` when the row cannot be deleted (it is then replayed again:
        rewriting a point is harmless)."""
        with self._lock:
            if not self._chunks or self._chunks[0][0] != seq:
                raise SpoolError(f"spool chunk {seq} is not the oldest")
            t = spool_table.c
            try:
                with self.engine.begin() as conn:
                    count = conn.execute(sa.delete(spool_table).where(t.seq == seq)
                                         .returning(t.line_count)).scalar_one_or_none()
            except Exception as exc:  # database away, or NotLeader: the row stays
                raise SpoolError(f"database spool chunk {seq}: cannot remove: {exc}") from exc
            _, size = self._chunks.pop(0)
            self._bytes -= size
            self.lines_out += int(count or 0)

    def _failed(self, what: str, exc: Exception) -> None:
        self.refused += 1
        log.error("database spool: %s: %s", what, exc)
        if self._on_error is not None:
            self._on_error(exc)
