"""State the leader keeps in the service database, so that a standby taking over
resumes where it stopped: the rule engine's snapshot (latches, ``for`` counters,
EWMA, baselines) and the most recent de-duplication keys of durable readings.

Table ``service_state``: one row per (group, name) with the document and when it was
saved; written by the leader on its fenced engine (:mod:`lifeline.fencing`), read by
the node that is elected next. Device status already lives in the database
(``device_status``), the open alerts and cases too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from lifeline.db import Migration
from lifeline.errors import LifelineError

log = logging.getLogger(__name__)

RULE_STATE: Final = "rules"
DEDUP_KEYS: Final = "dedup_keys"

metadata = sa.MetaData()

state_table = sa.Table(
    "service_state",
    metadata,
    sa.Column("group_name", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("saved_ns", sa.BigInteger, nullable=False),
    sa.Column("node_id", sa.String(128), nullable=False),
)


def _create(conn: Connection) -> None:
    metadata.create_all(conn, tables=[state_table])


MIGRATIONS: list[Migration] = [
    (1, "service_state: rule state and de-duplication keys shared by the nodes", _create),
]


class StateError(LifelineError):
    """The shared state could not be read or written."""


@dataclass(frozen=True, slots=True)
class SavedState:
    """One document as saved."""

    body: bytes
    saved_ns: int
    node_id: str


class SharedState:
    """Documents of one service group in ``service_state``."""

    def __init__(self, engine: Engine, group: str, node_id: str) -> None:
        self.engine = engine
        self.group = group
        self.node_id = node_id

    def save(self, name: str, body: bytes) -> None:
        """Replace document ``name`` (one transaction; fenced on the leader's engine)."""
        t = state_table.c
        now = time.time_ns()
        try:
            with self.engine.begin() as conn:
                done = conn.execute(
                    state_table.update().where(t.group_name == self.group, t.name == name)
                    .values(body=body, saved_ns=now, node_id=self.node_id)).rowcount
                if done == 0:
                    conn.execute(state_table.insert().values(
                        group_name=self.group, name=name, body=body, saved_ns=now,
                        node_id=self.node_id))
        except sa.exc.SQLAlchemyError as exc:
            raise StateError(f"cannot save {name}: {exc}") from exc

    def load(self, name: str) -> SavedState | None:
        """Document ``name``, or None when never saved."""
        t = state_table.c
        try:
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(t.body, t.saved_ns, t.node_id).where(
                    t.group_name == self.group, t.name == name)).first()
        except sa.exc.SQLAlchemyError as exc:
            raise StateError(f"cannot read {name}: {exc}") from exc
        if row is None:
            return None
        return SavedState(bytes(row.body), int(row.saved_ns), str(row.node_id))
