"""Fenced database engines: every write transaction of the leader checks its fencing token.

:func:`install_fence` hooks an engine so that, before the first ``INSERT``, ``UPDATE``
or ``DELETE`` of each transaction, the current :class:`~lifeline.leadership.Fence` is
checked *in that transaction* (PostgreSQL: ``SELECT … FOR SHARE`` of the lease row, so
a takeover's ``UPDATE`` of the row waits until the write commits or rolls back). A node
that is standby, stepped down, or whose token the database no longer carries gets
:class:`~lifeline.leadership.NotLeader` and the transaction rolls back: nothing the
alerts, the outbox, the spool, the rule state or the device status write can land
after a takeover. Reads are never fenced, so a standby's API answers from the same
database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from lifeline.leadership import Fence, NotLeader

log = logging.getLogger(__name__)

_WRITES: Final = ("INSERT", "UPDATE", "DELETE", "REPLAC", "MERGE ")
_CHECKED: Final = "lifeline_fence_checked"


def _is_write(statement: str) -> bool:
    head = statement.lstrip()[:6].upper()
    return head.startswith(_WRITES)


def install_fence(engine: Engine, fence: Callable[[], Fence]) -> None:
    """Check ``fence()`` (which raises :class:`NotLeader` as standby) before the first
    write of every transaction on ``engine``."""

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.info.pop(_CHECKED, None)

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Connection, cursor: Any, statement: str, parameters: Any,
                context: Any, executemany: bool) -> None:
        if conn.info.get(_CHECKED) or not _is_write(statement):
            return
        conn.info[_CHECKED] = True  # the check's own statement must not check again
        try:
            fence().check(conn)
        except BaseException:
            conn.info.pop(_CHECKED, None)
            raise

    @sa.event.listens_for(engine, "commit")
    def _commit(conn: Connection) -> None:
        conn.info.pop(_CHECKED, None)

    @sa.event.listens_for(engine, "rollback")
    def _rollback(conn: Connection) -> None:
        conn.info.pop(_CHECKED, None)


__all__ = ["NotLeader", "install_fence"]
