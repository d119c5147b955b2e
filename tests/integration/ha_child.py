"""A node for the leadership tests, run as a process of its own:
``python -m tests.integration.ha_child URL NODE LEASE_S RENEW_S POLL_S WRITE``.

It runs a :class:`LeaderElector` and, with WRITE=1, a writer that inserts a row into
``ha_writes`` under the fence every 20 ms while it believes it leads. It prints one line
per event (``elected <token>``, ``demoted <reason>``, ``fenced``, ``wrote <token>``
once per term) and runs until killed.
"""

from __future__ import annotations

import sys
import threading
import time

import sqlalchemy as sa

from lifeline.leadership import NS, LeaderElector, LeaderLease, NotLeader, lease_engine

GROUP = "ha-test"

writes_meta = sa.MetaData()
ha_writes = sa.Table(
    "ha_writes",
    writes_meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token", sa.BigInteger, nullable=False),
    sa.Column("node", sa.String(64), nullable=False),
)

_out = threading.Lock()


def emit(line: str) -> None:
    """One event line on stdout, flushed."""
    with _out:
        print(line, flush=True)


def fenced_write(elector: LeaderElector, engine: sa.engine.Engine, node: str) -> int | None:
    """One row under the current fence; its token, or None when not leader."""
    try:
        fence = elector.fence()
    except NotLeader:
        return None
    with engine.begin() as conn:
        fence.check(conn)
        conn.execute(ha_writes.insert().values(token=fence.token, node=node))
    return fence.token


def main(argv: list[str]) -> None:
    """Run the node."""
    url, node = argv[0], argv[1]
    lease_s, renew_s, poll_s = float(argv[2]), float(argv[3]), float(argv[4])
    write = argv[5] == "1"
    lease = LeaderLease(lease_engine(url, renew_s), GROUP, node, int(lease_s * NS))
    elector = LeaderElector(lease, renew_s=renew_s, poll_s=poll_s,
                            on_elected=lambda t: emit(f"elected {t}"),
                            on_demoted=lambda r: emit(f"demoted {r}"))
    elector.start()
    writer = lease_engine(url, renew_s)
    reported: set[int] = set()
    while True:
        if write:
            try:
                token = fenced_write(elector, writer, node)
                if token is not None and token not in reported:
                    reported.add(token)
                    emit(f"wrote {token}")
            except NotLeader:
                emit("fenced")
            except sa.exc.SQLAlchemyError as exc:
                emit(f"dberror {type(exc).__name__}")
        time.sleep(0.02)


if __name__ == "__main__":
    main(sys.argv[1:])
