"""The ``silences`` table, its rows as :class:`Silence` and the silences in force."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from alerts.metadata import metadata
from alerts.silences.model import Silence, SilenceKind

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


def silence_from_row(row: Row[Any]) -> Silence:
    """A :class:`Silence` from a row of ``silences``."""
    m = row._mapping
    return Silence(id=m["id"], kind=SilenceKind(m["kind"]), matchers=orjson.loads(m["matchers"]),
                   starts_ns=m["starts_ns"], ends_ns=m["ends_ns"], created_by=m["created_by"],
                   comment=m["comment"], created_ns=m["created_ns"])


def active_silences(conn: Connection, now_ns: int) -> list[Silence]:
    """Silences and maintenance windows in force at ``now_ns``."""
    rows = conn.execute(sa.select(silences).where(silences.c.starts_ns <= now_ns,
                                                  silences.c.ends_ns > now_ns))
    return [silence_from_row(r) for r in rows]
