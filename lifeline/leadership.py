"""Leadership for active/standby failover: a leader lease with a fencing token in the
service database, the :class:`Fence` every write path checks, and the
:class:`LeaderElector` loop.

Tables (component ``leadership``): ``leader_lease`` holds one row per service group
(holder, fencing ``token``, ``acquired_ns``, ``renewed_ns``, ``expires_ns``);
``cluster_nodes`` one row per node (host, pid, role, last seen, last takeover, and the
API URL other nodes forward writes to: ``api_url``, migration 2).

Expiry decisions use the database's clock on PostgreSQL (``statement_timestamp()``: one
value per statement, current even late in a long transaction, unlike ``now()``), so
clock skew between nodes cannot produce two leaders. SQLite has no server clock: the
node's wall clock is used, which is sound only when every node shares one clock,
i.e. one machine (SQLite is a single-node database anyway).

Timing (see docs/operations.md "High availability (foundation)"): a leader counts
its lease from the moment it *sent* a successful acquire/renew and steps down on its
own at ``sent + lease - margin`` (monotonic clock) unless a later renewal succeeded;
the database lets a standby in only after ``db_now(at the renewal) + lease``, which is
later. So a frozen or partitioned leader stops before anybody else can start.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from lifeline.db import Migration
from lifeline.errors import LifelineError

log = logging.getLogger(__name__)

NS: Final = 1_000_000_000

metadata = sa.MetaData()

leader_lease = sa.Table(
    "leader_lease",
    metadata,
    sa.Column("group_name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=True),
    sa.Column("token", sa.BigInteger, nullable=False),
    sa.Column("acquired_ns", sa.BigInteger, nullable=False),
    sa.Column("renewed_ns", sa.BigInteger, nullable=False),
    sa.Column("expires_ns", sa.BigInteger, nullable=False),
)

cluster_nodes = sa.Table(
    "cluster_nodes",
    metadata,
    sa.Column("node_id", sa.String(128), primary_key=True),
    sa.Column("group_name", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("last_seen_ns", sa.BigInteger, nullable=False),
    sa.Column("started_ns", sa.BigInteger, nullable=False),
    sa.Column("last_takeover_ns", sa.BigInteger, nullable=True),
    sa.Column("api_url", sa.String(512), nullable=True),  # where writes are forwarded to
)


def _create_tables(conn: Connection) -> None:
    metadata.create_all(conn, tables=[leader_lease, cluster_nodes])


def _add_api_url(conn: Connection) -> None:
    columns = {c["name"] for c in sa.inspect(conn).get_columns("cluster_nodes")}
    if "api_url" not in columns:  # a database created at version 1
        conn.execute(sa.text("ALTER TABLE cluster_nodes ADD COLUMN api_url VARCHAR(512)"))


MIGRATIONS: list[Migration] = [
    (1, "leader lease and cluster nodes", _create_tables),
    (2, "cluster_nodes.api_url (the API URL writes are forwarded to)", _add_api_url),
]


class NotLeader(LifelineError):  # noqa: N818 - the name the write paths catch
    """This node does not hold the lease (any more): the write must not happen."""


class LeaseError(LifelineError):
    """The lease could not be read or changed (the database failed)."""


def default_node_id() -> str:
    """``hostname-pid``: unique per process."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _pg_now_ns() -> Any:
    return sa.literal_column(
        "CAST(EXTRACT(EPOCH FROM statement_timestamp()) * 1000000000 AS BIGINT)", sa.BigInteger)


@dataclass(frozen=True, slots=True)
class LeaseState:
    """The lease row as read, with the database's clock at reading."""

    group: str
    holder: str | None
    token: int
    acquired_ns: int
    renewed_ns: int
    expires_ns: int
    now_ns: int

    @property
    def held(self) -> bool:
        """Whether somebody holds an unexpired lease."""
        return self.holder is not None and self.expires_ns > self.now_ns


@dataclass(frozen=True, slots=True)
class NodeState:
    """One row of ``cluster_nodes``."""

    node_id: str
    host: str
    pid: int
    role: str
    last_seen_ns: int
    started_ns: int
    last_takeover_ns: int | None
    api_url: str | None = None


class LeaderLease:
    """The lease of ``group`` in the database of ``engine``, as seen by ``node_id``.

    Every operation is one short transaction; :meth:`renew` is a single conditional
    ``UPDATE``, :meth:`try_acquire` a read and a conditional ``UPDATE`` on what was read
    (compare-and-set), so racing nodes never both win.
    """

    def __init__(self, engine: Engine, group: str, node_id: str, lease_ns: int) -> None:
        if lease_ns <= 0:
            raise ValueError("the lease must be positive")
        self.engine = engine
        self.group = group
        self.node_id = node_id
        self.lease_ns = lease_ns
        self.postgres = engine.dialect.name == "postgresql"
        # the holder of the row just before our last successful acquire (None: it was
        # free or released cleanly); not None means that acquire was a takeover
        self.previous_holder: str | None = None

    # -- clock -----------------------------------------------------------------------

    def _now(self) -> Any:
        """The clock expiry is judged by: the database's on PostgreSQL, this node's on SQLite."""
        if self.postgres:
            return _pg_now_ns()
        return sa.literal(time.time_ns(), sa.BigInteger)

    def _begin(self, conn: Connection) -> None:
        if self.postgres:  # never hang on a lock held by a stuck transaction
            ms = max(1, self.lease_ns // 2 // 1_000_000)
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")

    def _ensure_row(self, conn: Connection) -> None:
        stmt: Any
        values = {"group_name": self.group, "holder": None, "token": 0,
                  "acquired_ns": 0, "renewed_ns": 0, "expires_ns": 0}
        if self.postgres:
            from sqlalchemy.dialects.postgresql import insert as pg_insert  # noqa: PLC0415

            stmt = pg_insert(leader_lease).values(**values).on_conflict_do_nothing()
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert  # noqa: PLC0415

            stmt = sqlite_insert(leader_lease).values(**values).on_conflict_do_nothing()
        conn.execute(stmt)

    # -- operations --------------------------------------------------------------------

    def try_acquire(self) -> int | None:
        """Take the lease if it is free or expired; the new fencing token, else None.

        The row is read and then changed only if it still carries the token and holder
        read (compare-and-set; on PostgreSQL the read also locks the row, on SQLite the
        transaction holds the write lock). On success :attr:`previous_holder` is the holder
        read: None when the lease was free or released cleanly, a node id when its lease
        expired (a takeover)."""
        try:
            with self.engine.begin() as conn:
                self._begin(conn)
                self._ensure_row(conn)
                now = self._now()
                t = leader_lease.c
                free = sa.or_(t.holder.is_(None), t.expires_ns <= now)
                before = sa.select(t.holder, t.token).where(t.group_name == self.group, free)
                if self.postgres:  # lock the row: nobody changes it between read and update
                    before = before.with_for_update()
                found = conn.execute(before).first()
                if found is None:
                    return None
                result = conn.execute(
                    leader_lease.update()
                    .where(t.group_name == self.group, t.token == found.token,
                           t.holder.is_not_distinct_from(found.holder), free)
                    .values(holder=self.node_id, token=t.token + 1, acquired_ns=now,
                            renewed_ns=now, expires_ns=now + self.lease_ns))
                if result.rowcount != 1:
                    return None
                token = conn.execute(sa.select(t.token).where(
                    t.group_name == self.group, t.holder == self.node_id)).scalar_one()
        except sa.exc.SQLAlchemyError as exc:
            raise LeaseError(f"lease {self.group}: acquire failed: {exc}") from exc
        self.previous_holder = found.holder
        if found.holder is None:
            log.info("node %s acquired the lease of %s with token %d",
                     self.node_id, self.group, token)
        else:
            log.warning("node %s took the lease of %s over from %s (expired) with token %d",
                        self.node_id, self.group, found.holder, token)
        return int(token)

    def renew(self, token: int) -> bool:
        """Extend our unexpired lease of ``token``; False when it is no longer ours."""
        try:
            with self.engine.begin() as conn:
                self._begin(conn)
                now = self._now()
                t = leader_lease.c
                result = conn.execute(
                    leader_lease.update()
                    .where(t.group_name == self.group, t.holder == self.node_id,
                           t.token == token, t.expires_ns > now)
                    .values(renewed_ns=now, expires_ns=now + self.lease_ns))
                return bool(result.rowcount == 1)
        except sa.exc.SQLAlchemyError as exc:
            raise LeaseError(f"lease {self.group}: renew failed: {exc}") from exc

    def release(self, token: int) -> bool:
        """Give the lease up now (a clean shutdown); the token stays, so it still increases."""
        try:
            with self.engine.begin() as conn:
                self._begin(conn)
                t = leader_lease.c
                result = conn.execute(
                    leader_lease.update()
                    .where(t.group_name == self.group, t.holder == self.node_id,
                           t.token == token)
                    .values(holder=None, expires_ns=0))
                return bool(result.rowcount == 1)
        except sa.exc.SQLAlchemyError as exc:
            raise LeaseError(f"lease {self.group}: release failed: {exc}") from exc

    def read(self) -> LeaseState | None:
        """The lease row, or None when nobody ever took it."""
        try:
            with self.engine.connect() as conn:
                t = leader_lease.c
                row = conn.execute(sa.select(
                    t.holder, t.token, t.acquired_ns, t.renewed_ns, t.expires_ns,
                    self._now().label("now_ns")).where(t.group_name == self.group)).first()
        except sa.exc.SQLAlchemyError as exc:
            raise LeaseError(f"lease {self.group}: read failed: {exc}") from exc
        if row is None:
            return None
        return LeaseState(self.group, row.holder, int(row.token), int(row.acquired_ns),
                          int(row.renewed_ns), int(row.expires_ns), int(row.now_ns))

    def check(self, conn: Connection, token: int) -> None:
        """Raise :class:`NotLeader` unless the lease still carries ``token``, held by us
        and unexpired, in the transaction of ``conn``.

        PostgreSQL: ``SELECT … FOR SHARE`` keeps a takeover (an ``UPDATE`` of the row)
        waiting until this transaction ends, so the write is ordered before it. SQLite:
        a no-op ``UPDATE`` takes the database's write lock for the rest of the transaction.
        """
        t = leader_lease.c
        where = (t.group_name == self.group, t.holder == self.node_id, t.token == token)
        if self.postgres:
            row = conn.execute(sa.select(t.expires_ns, _pg_now_ns().label("now_ns"))
                               .where(*where).with_for_update(read=True)).first()
            ok = row is not None and int(row.expires_ns) > int(row.now_ns)
        else:
            result = conn.execute(leader_lease.update()
                                  .where(*where, t.expires_ns > time.time_ns())
                                  .values(token=t.token))
            ok = result.rowcount == 1
        if not ok:
            raise NotLeader(f"node {self.node_id} no longer holds the lease of {self.group} "
                            f"with token {token}")

    # -- nodes -------------------------------------------------------------------------

    def heartbeat(self, role: str, *, started_ns: int, takeover: bool = False,
                  api_url: str | None = None) -> None:
        """Record this node in ``cluster_nodes`` (role, last seen, the API URL other nodes
        forward writes to; a takeover's time)."""
        now = time.time_ns()
        values: dict[str, Any] = {"group_name": self.group, "host": socket.gethostname(),
                                  "pid": os.getpid(), "role": role, "last_seen_ns": now,
                                  "api_url": api_url}
        if takeover:
            values["last_takeover_ns"] = now
        try:
            with self.engine.begin() as conn:
                self._begin(conn)
                n = cluster_nodes.c
                done = conn.execute(cluster_nodes.update().where(n.node_id == self.node_id)
                                    .values(**values)).rowcount
                if done == 0:
                    values.setdefault("last_takeover_ns", None)
                    conn.execute(cluster_nodes.insert().values(
                        node_id=self.node_id, started_ns=started_ns, **values))
        except sa.exc.SQLAlchemyError as exc:
            raise LeaseError(f"node {self.node_id}: heartbeat failed: {exc}") from exc

    def nodes(self) -> list[NodeState]:
        """Every node of the group, by id."""
        n = cluster_nodes.c
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(
                    n.node_id, n.host, n.pid, n.role, n.last_seen_ns, n.started_ns,
                    n.last_takeover_ns, n.api_url).where(n.group_name == self.group)
                    .order_by(n.node_id)).all()
        except sa.exc.SQLAlchemyError as exc:
            raise LeaseError(f"lease {self.group}: reading nodes failed: {exc}") from exc
        return [NodeState(r.node_id, r.host, int(r.pid), r.role, int(r.last_seen_ns),
                          int(r.started_ns), None if r.last_takeover_ns is None
                          else int(r.last_takeover_ns), r.api_url) for r in rows]

    def leader_api_url(self) -> str | None:
        """The API URL the holder of the unexpired lease advertised; None when nobody
        holds it or the holder recorded no URL (one query)."""
        t, n = leader_lease.c, cluster_nodes.c
        query = (sa.select(n.api_url)
                 .select_from(leader_lease.join(cluster_nodes, n.node_id == t.holder))
                 .where(t.group_name == self.group, n.group_name == self.group,
                        t.expires_ns > self._now()))
        try:
            with self.engine.connect() as conn:
                url = conn.execute(query).scalar_one_or_none()
        except sa.exc.SQLAlchemyError as exc:
            raise LeaseError(f"lease {self.group}: reading the leader failed: {exc}") from exc
        return str(url) if url else None


class Fence:
    """The check every write path makes: "this transaction writes under our token".

    :meth:`check` first looks at the elector's local deadline (no database round trip
    when we already know we are no longer leader), then verifies the lease row in the
    caller's transaction; :class:`NotLeader` propagates and rolls the transaction back.
    """

    def __init__(self, lease: LeaderLease, token: int,
                 valid: Callable[[], bool] | None = None) -> None:
        self.lease = lease
        self.token = token
        self._valid = valid

    def check(self, conn: Connection) -> None:
        """Raise :class:`NotLeader` unless we still lead with this token."""
        if self._valid is not None and not self._valid():
            raise NotLeader(f"node {self.lease.node_id} stepped down from token {self.token}")
        self.lease.check(conn, self.token)


def lease_engine(url: str, timeout_s: float) -> Engine:
    """An engine whose calls give up after ``timeout_s``: for the elector, and for fenced
    writers.

    PostgreSQL: connect, statement, unacknowledged TCP send and *idle in transaction*
    all time out, so a partitioned database cannot hang the loop, and a frozen
    (SIGSTOPped) process's open transaction, with its ``FOR SHARE`` lock on the lease
    row, is ended by the server instead of blocking the takeover. SQLite: the busy
    timeout is ``timeout_s``."""
    if not url.startswith("postgresql"):  # a short busy timeout instead of the service's 30 s
        return sa.create_engine(url, future=True, connect_args={
            "timeout": timeout_s, "check_same_thread": False})
    ms = max(1, int(timeout_s * 1000))
    return sa.create_engine(url, future=True, pool_pre_ping=False, connect_args={
        "connect_timeout": max(1, int(timeout_s + 0.999)),
        "options": f"-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms}",
        "tcp_user_timeout": ms,
        "keepalives": 1, "keepalives_idle": 1, "keepalives_interval": 1,
        "keepalives_count": 2,
    })


class LeaderElector:
    """The leadership loop of one node, in a thread of its own.

    As standby it calls :meth:`LeaderLease.try_acquire` every ``poll_s``; as leader it
    renews every ``renew_s`` and steps down by itself when a renewal says the lease is
    gone or when no renewal succeeded for ``lease - margin`` (the database unreachable or
    too slow). Database calls run in a worker thread and are waited for only until that
    deadline, so a hung connection cannot keep a stale leader in office.

    Every heartbeat records ``api_url`` (where the other nodes forward API writes).
    Counters: :attr:`elections` (every term won), :attr:`takeovers` (terms won from a
    holder whose lease had expired: :attr:`previous_holder` is then its id, set before
    ``on_elected`` runs) and :attr:`demotions`.
    """

    def __init__(self, lease: LeaderLease, *, renew_s: float, poll_s: float,
                 margin_s: float | None = None,
                 on_elected: Callable[[int], None] | None = None,
                 on_demoted: Callable[[str], None] | None = None,
                 api_url: str | None = None) -> None:
        lease_s = lease.lease_ns / NS
        self.margin_s = lease_s / 5 if margin_s is None else margin_s
        if not 0 < renew_s * 2 <= lease_s - self.margin_s:
            raise ValueError("the lease must leave room for two renewals plus the margin")
        self.lease = lease
        self.renew_s = renew_s
        self.poll_s = poll_s
        self.on_elected = on_elected
        self.on_demoted = on_demoted
        self.api_url = api_url
        self.started_ns = time.time_ns()
        self._lock = threading.Lock()
        self._token: int | None = None
        self._deadline = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"lease-{lease.node_id}")
        self._pending: concurrent.futures.Future[Any] | None = None
        self._beats = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"beat-{lease.node_id}")
        self._beat: concurrent.futures.Future[None] | None = None
        self.elections = 0
        self.takeovers = 0
        self.demotions = 0
        self.previous_holder: str | None = None  # of the current (or last) term

    # -- state ------------------------------------------------------------------------

    @property
    def token(self) -> int | None:
        """Our fencing token while we lead (and the local deadline has not passed)."""
        with self._lock:
            if self._token is not None and time.monotonic() < self._deadline:
                return self._token
            return None

    @property
    def is_leader(self) -> bool:
        """Whether this node leads right now (by its own, conservative, reckoning)."""
        return self.token is not None

    def remaining_s(self) -> float:
        """Seconds until the local step-down deadline of the current term (0 as standby)."""
        with self._lock:
            if self._token is None:
                return 0.0
            return max(0.0, self._deadline - time.monotonic())

    def fence(self) -> Fence:
        """The fence of the current term; raises :class:`NotLeader` as standby."""
        token = self.token
        if token is None:
            raise NotLeader(f"node {self.lease.node_id} is standby")

        def valid() -> bool:
            return self.token == token

        return Fence(self.lease, token, valid)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in a daemon thread."""
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"elector-{self.lease.node_id}")
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop the loop; as leader, step down (and release the lease when ``release``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.lease.lease_ns / NS + 5)
        with self._lock:
            token, self._token = self._token, None
        if token is not None:
            if release:
                try:
                    self._call(self.lease.release, token,
                               timeout=self.lease.lease_ns / NS - self.margin_s)
                except (LeaseError, TimeoutError) as exc:
                    log.warning("releasing the lease failed: %s", exc)
            self._demote("stopped")
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._beats.shutdown(wait=False, cancel_futures=True)

    # -- the loop -----------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
        """``fn(*args)`` in the worker, waited for at most ``timeout`` s.

        A call still running from before is waited for first (never two at once)."""
        if self._pending is None or self._pending.done():
            self._pending = self._pool.submit(fn, *args)
            fresh = True
        else:
            fresh = False
        try:
            result = self._pending.result(timeout=max(0.0, timeout))
        except concurrent.futures.TimeoutError as exc:
            raise TimeoutError("database call timed out") from exc
        if not fresh:  # that was an old call's answer: too stale to act on
            raise TimeoutError("previous database call finished late")
        return result

    def _heartbeat(self, role: str, takeover: bool = False, force: bool = False) -> None:
        """Record the node in ``cluster_nodes`` from a worker of its own, without waiting:
        a slow heartbeat must never delay a renewal (one at a time; an election's waits)."""
        if self._beat is not None and not self._beat.done() and not force:
            return

        def beat() -> None:
            try:
                self.lease.heartbeat(role, started_ns=self.started_ns, takeover=takeover,
                                     api_url=self.api_url)
            except LeaseError as exc:
                log.debug("heartbeat of %s failed: %s", self.lease.node_id, exc)

        self._beat = self._beats.submit(beat)

    def _run(self) -> None:
        lease_s = self.lease.lease_ns / NS
        while not self._stop.is_set():
            with self._lock:
                token = self._token
            if token is None:
                sent = time.monotonic()
                try:
                    got = self._call(self.lease.try_acquire, timeout=lease_s - self.margin_s)
                except (LeaseError, TimeoutError) as exc:
                    log.debug("standby %s: acquire failed: %s", self.lease.node_id, exc)
                    got = None
                if got is not None and not self._stop.is_set():
                    previous = self.lease.previous_holder
                    with self._lock:
                        self._token = got
                        self._deadline = sent + lease_s - self.margin_s
                        self.previous_holder = previous
                    self.elections += 1
                    if previous is not None:
                        self.takeovers += 1
                    log.warning("node %s is now the leader (token %d%s)", self.lease.node_id,
                                got, "" if previous is None else f", taken over from {previous}")
                    if self.on_elected is not None:
                        self.on_elected(got)
                    self._heartbeat("leader", takeover=previous is not None, force=True)
                    continue
                self._heartbeat("standby")
                self._stop.wait(self.poll_s)
                continue
            with self._lock:
                left = self._deadline - time.monotonic()
            self._stop.wait(min(self.renew_s, max(0.0, left)))
            if self._stop.is_set():
                return
            self._renew_once(token)

    def _renew_once(self, token: int) -> None:
        sent = time.monotonic()
        with self._lock:
            remaining = self._deadline - sent
        if remaining <= 0:
            self._step_down(token, "no renewal within the lease (database unreachable)")
            return
        try:
            ok = self._call(self.lease.renew, token, timeout=remaining)
        except (LeaseError, TimeoutError) as exc:
            log.warning("leader %s: renewal failed: %s", self.lease.node_id, exc)
            if time.monotonic() >= self._deadline:
                self._step_down(token, "no renewal within the lease (database unreachable)")
            return
        if not ok:
            self._step_down(token, "lease lost")
            return
        with self._lock:
            self._deadline = sent + self.lease.lease_ns / NS - self.margin_s
        self._heartbeat("leader")

    def _step_down(self, token: int, reason: str) -> None:
        with self._lock:
            if self._token != token:
                return
            self._token = None
        log.warning("node %s steps down from token %d: %s", self.lease.node_id, token, reason)
        self._demote(reason)

    def _demote(self, reason: str) -> None:
        self.demotions += 1
        if self.on_demoted is not None:
            self.on_demoted(reason)


def advertised_api_url(settings: Any) -> str | None:
    """The API URL this node advertises: ``ha.advertise_url``, else
    ``http://<hostname>:<api.port>`` when the API runs, else None."""
    if settings.ha.advertise_url:
        return str(settings.ha.advertise_url)
    if settings.api.enabled:
        return f"http://{socket.gethostname()}:{settings.api.port}"
    return None


def elector_from_settings(settings: Any, *,
                          on_elected: Callable[[int], None] | None = None,
                          on_demoted: Callable[[str], None] | None = None) -> LeaderElector:
    """The elector ``[ha]`` of ``settings`` (a :class:`lifeline.settings.Settings`) describes,
    on an engine of its own with the lease's timeouts (not started); it advertises
    :func:`advertised_api_url`."""
    ha = settings.ha
    engine = lease_engine(settings.database_url, ha.renew_interval.seconds)
    lease = LeaderLease(engine, ha.group, ha.node_id or default_node_id(), ha.lease.ns)
    return LeaderElector(lease, renew_s=ha.renew_interval.seconds,
                         poll_s=ha.poll_interval.seconds,
                         on_elected=on_elected, on_demoted=on_demoted,
                         api_url=advertised_api_url(settings))
