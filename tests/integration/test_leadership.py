"""Leadership on a real database (SQLite file and the PostgreSQL at 127.0.0.1:5432): the
lease is taken atomically, fencing rolls back a stale leader's writes, a standby takes
over within lease + poll, a partitioned leader steps down by itself, and a slow but
reachable database does not make leadership flap."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.engine import Engine

from bench.soak import TcpProxy
from lifeline import cli
from lifeline.db import migrate, open_database, schema_components, schema_versions
from lifeline.leadership import (
    MIGRATIONS,
    NS,
    LeaderElector,
    LeaderLease,
    NotLeader,
    lease_engine,
)
from lifeline.metrics import HaCollector
from tests.integration.ha_child import GROUP, fenced_write, ha_writes, writes_meta

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 1.5
RENEW_S = 0.25
POLL_S = 0.1


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """The migrated service database with the test's ``ha_writes`` table."""
    eng = open_database(db_url)
    writes_meta.create_all(eng)
    yield eng
    eng.dispose()


def _lease(url: str, node: str, lease_s: float = LEASE_S) -> LeaderLease:
    return LeaderLease(lease_engine(url, RENEW_S * 2), GROUP, node, int(lease_s * NS))


def _elector(lease: LeaderLease, events: list[tuple[float, str, str]]) -> LeaderElector:
    node = lease.node_id
    return LeaderElector(
        lease, renew_s=RENEW_S, poll_s=POLL_S,
        on_elected=lambda t: events.append((time.monotonic(), node, f"elected {t}")),
        on_demoted=lambda r: events.append((time.monotonic(), node, f"demoted {r}")))


def _wait(pred: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``pred()`` held; fails after ``timeout``."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.005)
    return time.monotonic() - t0


class Sampler:
    """Samples ``is_leader`` of electors every millisecond; counts moments with two."""

    def __init__(self, electors: list[LeaderElector]) -> None:
        self.electors = electors
        self.samples = 0
        self.both = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if sum(e.is_leader for e in self.electors) > 1:
                self.both += 1
            self.samples += 1
            time.sleep(0.001)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


def _tokens_in_commit_order(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [int(t) for t in conn.execute(
            sa.select(ha_writes.c.token).order_by(ha_writes.c.id)).scalars()]


class FaultyProxy(TcpProxy):
    """bench/soak.py's proxy, plus a delay per forwarded chunk and a blackhole mode
    (:attr:`frozen`: connections stay open, nothing is forwarded)."""

    def __init__(self, target: tuple[str, int], delay: float = 0.0) -> None:
        self.delay = delay
        self.frozen = threading.Event()
        super().__init__(target)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.frozen.is_set():
                    time.sleep(0.01)
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


def _proxied(url: str, proxy: TcpProxy) -> str:
    return url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")


# --------------------------------------------------------------------------- the lease


def test_racing_nodes_never_both_win(db_url: str, engine: Engine) -> None:
    """Eight nodes, each on its own connection, try to take the lease at the same
    instant, round after round: exactly one wins each round, tokens strictly increase."""
    nodes = [_lease(db_url, f"n{i}", lease_s=0.3) for i in range(8)]
    tokens: list[int] = []
    for _ in range(5):
        barrier = threading.Barrier(len(nodes))
        won: list[int] = []

        def race(lease: LeaderLease, barrier: threading.Barrier = barrier,
                 won: list[int] = won) -> None:
            barrier.wait()
            token = lease.try_acquire()
            if token is not None:
                won.append(token)

        threads = [threading.Thread(target=race, args=(n,)) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, won
        tokens.extend(won)
        time.sleep(0.35)  # the lease expires: next round is a takeover
    assert tokens == sorted(set(tokens)) and len(tokens) == 5


def test_fence_rolls_back_a_stale_leaders_write(db_url: str, engine: Engine) -> None:
    """A leader whose lease expired and was taken over cannot renew, and a write
    transaction under its old token is rolled back; the new leader's commits."""
    a, b = _lease(db_url, "a", lease_s=0.5), _lease(db_url, "b", lease_s=0.5)
    token_a = a.try_acquire()
    assert token_a is not None
    assert b.try_acquire() is None  # held
    assert a.renew(token_a)
    with engine.begin() as conn:
        a.check(conn, token_a)
        conn.execute(ha_writes.insert().values(token=token_a, node="a"))
    time.sleep(0.6)
    token_b = b.try_acquire()
    assert token_b is not None and token_b > token_a
    assert not a.renew(token_a)
    with pytest.raises(NotLeader), engine.begin() as conn:
        conn.execute(ha_writes.insert().values(token=token_a, node="a-stale"))
        a.check(conn, token_a)
    with engine.begin() as conn:
        b.check(conn, token_b)
        conn.execute(ha_writes.insert().values(token=token_b, node="b"))
    with engine.connect() as conn:
        nodes = list(conn.execute(sa.select(ha_writes.c.node).order_by(ha_writes.c.id))
                     .scalars())
    assert nodes == ["a", "b"]
    # release keeps the token increasing
    assert b.release(token_b)
    token_a2 = a.try_acquire()
    assert token_a2 is not None and token_a2 > token_b
    state = a.read()
    assert state is not None and state.holder == "a" and state.token == token_a2


def test_takeover_waits_for_the_old_leaders_fenced_transaction(db_url: str,
                                                               engine: Engine) -> None:
    """A write transaction that passed the fence holds off a takeover until it ends
    (PostgreSQL: ``FOR SHARE``; SQLite: the write lock), so the old leader's write is
    ordered before the new leader's acquisition, never after."""
    a, b = _lease(db_url, "a", lease_s=1.0), _lease(db_url, "b", lease_s=1.0)
    token_a = a.try_acquire()
    assert token_a is not None
    got: list[tuple[float, int | None]] = []
    with engine.begin() as conn:
        a.check(conn, token_a)
        conn.execute(ha_writes.insert().values(token=token_a, node="a"))
        time.sleep(1.1)  # the lease expires while the transaction is open

        def take() -> None:
            token = b.try_acquire()
            got.append((time.monotonic(), token))

        taker = threading.Thread(target=take)
        taker.start()
        time.sleep(0.3)
        assert got == []  # waiting for our transaction
        committed = time.monotonic()
    taker.join()
    assert got[0][1] == token_a + 1 and got[0][0] >= committed
    with engine.connect() as conn:
        assert conn.execute(sa.select(ha_writes.c.node)).scalars().all() == ["a"]


def test_an_expired_lease_cannot_be_renewed_even_untaken(db_url: str, engine: Engine) -> None:
    """Once expired the lease is gone for its holder: it must acquire anew (new token)."""
    a = _lease(db_url, "a", lease_s=0.3)
    token = a.try_acquire()
    assert token is not None
    time.sleep(0.4)
    assert not a.renew(token)
    with pytest.raises(NotLeader), engine.begin() as conn:
        a.check(conn, token)
    again = a.try_acquire()
    assert again == token + 1


# --------------------------------------------------------------------------- the elector


def test_two_electors_one_leader_and_takeover(db_url: str, engine: Engine) -> None:
    """Two electors on one database: one leads at any sampled moment; when the leader
    stops renewing, the standby takes over within lease + poll, only after the lease
    expired in the database, with a higher token; the old fence then fails."""
    events: list[tuple[float, str, str]] = []
    first, second = (_elector(_lease(db_url, n), events) for n in ("a", "b"))
    first.start()
    _wait(lambda: first.is_leader, 5)
    second.start()
    sampler = Sampler([first, second])
    time.sleep(1.5)  # several renewals: the leader stays, the standby waits
    assert first.is_leader and not second.is_leader
    old_fence = first.fence()
    stopped = time.monotonic()
    first.stop(release=False)  # killed: no more renewals, the lease is not released
    before = first.lease.read()
    assert before is not None and before.holder == "a"
    took = _wait(lambda: second.is_leader, LEASE_S + POLL_S + 2)
    sampler.stop()
    try:
        assert sampler.both == 0 and sampler.samples > 1000
        assert took <= LEASE_S + POLL_S + 0.5, took
        assert second.token is not None and second.token > old_fence.token
        state = second.lease.read()
        assert state is not None and state.holder == "b"
        # the standby got in only after the old lease expired in the database
        assert state.acquired_ns >= before.expires_ns
        with pytest.raises(NotLeader), engine.begin() as conn:
            conn.execute(ha_writes.insert().values(token=old_fence.token, node="a"))
            old_fence.check(conn)
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(ha_writes)).scalar() == 0
        assert [e[2].split()[0] for e in events] == ["elected", "demoted", "elected"]
        assert events[1][0] >= stopped  # a stepped down when stopped, before b took over
        assert events[1][0] < events[2][0]
    finally:
        second.stop()


def _child(url: str, node: str, write: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.ha_child", url, node, str(LEASE_S),
         str(RENEW_S), str(POLL_S), "1" if write else "0"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


class Lines:
    """The child's event lines with their arrival times."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        assert proc.stdout is not None
        stdout = proc.stdout

        def read() -> None:
            for line in stdout:
                self.lines.append((time.monotonic(), line.strip()))

        threading.Thread(target=read, daemon=True).start()

    def first(self, prefix: str) -> tuple[float, str] | None:
        """The first line starting with ``prefix``."""
        return next((x for x in self.lines if x[1].startswith(prefix)), None)


def test_frozen_leader_process_is_replaced_and_fenced(db_url: str, engine: Engine) -> None:
    """A leader process writing under its fence is SIGSTOPped: the standby takes over
    within lease + poll and writes; after SIGCONT the old leader steps down without
    fighting, and no row under its token is committed after the new leader's first.

    On SQLite the child does not write: a process frozen inside a SQLite write
    transaction holds the whole database (single-node only, see the docs)."""
    postgres = db_url.startswith("postgresql")
    proc = _child(db_url, "child", write=postgres)
    lines = Lines(proc)
    events: list[tuple[float, str, str]] = []
    standby = _elector(_lease(db_url, "main"), events)
    stop_writer = threading.Event()

    def writer() -> None:
        while not stop_writer.is_set():
            with contextlib.suppress(NotLeader):
                fenced_write(standby, engine, "main")
            time.sleep(0.02)

    writing = threading.Thread(target=writer, daemon=True)
    try:
        _wait(lambda: lines.first("elected") is not None, 15)
        if postgres:
            _wait(lambda: lines.first("wrote") is not None, 5)
        standby.start()
        writing.start()
        time.sleep(0.8)
        assert not standby.is_leader
        os.kill(proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        took = _wait(lambda: standby.is_leader, LEASE_S + POLL_S + 3)
        assert took <= LEASE_S + POLL_S + 0.8, took
        time.sleep(0.5)  # the new leader writes
        os.kill(proc.pid, signal.SIGCONT)
        _wait(lambda: lines.first("demoted") is not None, 3)
        time.sleep(0.5)
        assert standby.is_leader  # the old leader did not fight back
        assert standby.takeovers == 1 and standby.demotions == 0
        demoted = lines.first("demoted")
        assert demoted is not None and demoted[0] > frozen
        assert [line for _, line in lines.lines if line.startswith("elected")] == ["elected 1"]
    finally:
        stop_writer.set()
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()
        standby.stop()
    tokens = _tokens_in_commit_order(engine)
    assert tokens == sorted(tokens)  # nothing under token 1 after token 2's first row
    assert 2 in tokens
    if postgres:
        assert 1 in tokens


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("fault", ["cut", "blackhole"])
def test_leader_cut_off_from_the_database_steps_down(db_url: str, engine: Engine,
                                                     fault: str) -> None:
    """The leader reaches PostgreSQL through a proxy that is cut (connections closed,
    new ones refused) or turned into a blackhole (nothing forwarded): it steps down by
    itself, before the standby (direct connection) takes over."""
    proxy = FaultyProxy(("127.0.0.1", 5432))
    events: list[tuple[float, str, str]] = []
    leader = _elector(_lease(_proxied(db_url, proxy), "a"), events)
    standby = _elector(_lease(db_url, "b"), events)
    try:
        leader.start()
        _wait(lambda: leader.is_leader, 5)
        standby.start()
        sampler = Sampler([leader, standby])
        time.sleep(0.6)
        cut_at = time.monotonic()
        if fault == "cut":
            threading.Thread(target=proxy.cut, args=(LEASE_S + 2,), daemon=True).start()
        else:
            proxy.frozen.set()
        _wait(lambda: standby.is_leader, LEASE_S + POLL_S + 3)
        sampler.stop()
        assert sampler.both == 0
        kinds = [(node, text.split()[0]) for _, node, text in events]
        assert kinds == [("a", "elected"), ("a", "demoted"), ("b", "elected")]
        demoted_at, _, reason = events[1]
        assert "unreachable" in reason
        assert demoted_at - cut_at <= LEASE_S, demoted_at - cut_at
        assert events[2][0] - cut_at <= LEASE_S + POLL_S + 0.8
    finally:
        proxy.frozen.clear()
        standby.stop()
        leader.stop()
        proxy.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_slow_database_does_not_flap(db_url: str, engine: Engine) -> None:
    """Every packet to and from PostgreSQL delayed by 40 ms (a renewal takes several
    hundred ms): the leader keeps the lease, the standby never takes over."""
    proxy = FaultyProxy(("127.0.0.1", 5432), delay=0.04)
    events: list[tuple[float, str, str]] = []
    leader = _elector(_lease(_proxied(db_url, proxy), "a"), events)
    standby = _elector(_lease(_proxied(db_url, proxy), "b"), events)
    try:
        leader.start()
        _wait(lambda: leader.is_leader, 5)
        standby.start()
        time.sleep(3 * LEASE_S)
        assert leader.is_leader and not standby.is_leader
        assert [text.split()[0] for _, _, text in events] == ["elected"]
        state = leader.lease.read()
        elected = int(events[0][2].split()[1])
        assert state is not None and state.token == elected
        assert state.renewed_ns > state.acquired_ns
    finally:
        standby.stop()
        leader.stop()
        proxy.close()


# --------------------------------------------------------------------------- lifeline status


def test_status_command_shows_nodes_and_leader(db_url: str, engine: Engine, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``lifeline status --json`` reads the tables: both nodes with their API URLs, the
    leader and its token; a first election is no takeover, a lease left to expire is."""
    config = tmp_path / "lifeline.toml"
    config.write_text(f'run_dir = "{tmp_path}"\n[database]\nurl = "{db_url}"\n'
                      f'[ha]\nenabled = true\ngroup = "{GROUP}"\n')
    events: list[tuple[float, str, str]] = []
    first, second = (_elector(_lease(db_url, n), events) for n in ("a", "b"))
    first.api_url = "http://host-a:8080"
    second.api_url = "http://operator:s3cret@host-b:8080"
    first.start()
    _wait(lambda: first.is_leader, 5)
    second.start()
    time.sleep(0.5)
    try:
        assert cli.main(["--config", str(config), "status", "--json"]) == 0
        doc = orjson.loads(capsys.readouterr().out)
        assert doc["leader"]["node_id"] == "a" and doc["leader"]["token"] == 1
        assert 0 <= doc["leader"]["lease_age_s"] < 5
        assert {n["node_id"]: (n["role"], n["api_url"]) for n in doc["nodes"]} == {
            "a": ("leader", "http://host-a:8080"),
            "b": ("standby", "http://operator:********@host-b:8080")}
        assert doc["last_takeover_ns"] is None  # the lease was free: no takeover
        assert cli.main(["--config", str(config), "status"]) == 0
        text = capsys.readouterr().out
        assert "leader: a  token 1" in text and "standby" in text
        assert "api http://host-a:8080" in text and "s3cret" not in text
        first.stop(release=False)  # killed: b takes the expired lease over
        _wait(lambda: second.is_leader, LEASE_S + POLL_S + 3)
        time.sleep(0.3)  # the takeover's heartbeat
        assert cli.main(["--config", str(config), "status", "--json"]) == 0
        doc = orjson.loads(capsys.readouterr().out)
        assert doc["leader"]["node_id"] == "b" and doc["leader"]["token"] == 2
        nodes = {n["node_id"]: n for n in doc["nodes"]}
        assert nodes["a"]["last_takeover_ns"] is None
        assert doc["last_takeover_ns"] == nodes["b"]["last_takeover_ns"] is not None
        assert cli.main(["--config", str(config), "status"]) == 0
        assert "last takeover:" in capsys.readouterr().out
    finally:
        second.stop()
        first.stop()


# --------------------------------------------------------------------------- the API's view


def test_previous_holder_tells_a_takeover_from_a_clean_handover(db_url: str,
                                                                engine: Engine) -> None:
    """``previous_holder``: None for a free row and after a release, the old holder when
    its lease expired; a failed acquire leaves it alone."""
    a, b = _lease(db_url, "a", lease_s=0.4), _lease(db_url, "b", lease_s=0.4)
    token = a.try_acquire()
    assert token == 1 and a.previous_holder is None  # never held
    assert b.try_acquire() is None and b.previous_holder is None
    assert a.release(token)
    assert b.try_acquire() == 2 and b.previous_holder is None  # released cleanly
    time.sleep(0.5)
    assert a.try_acquire() == 3 and a.previous_holder == "b"  # b's lease expired
    assert a.renew(3)
    assert b.try_acquire() is None and b.previous_holder is None
    time.sleep(0.5)
    assert a.try_acquire() == 4 and a.previous_holder == "a"  # our own, expired


def test_electors_count_takeovers_not_clean_elections(db_url: str, engine: Engine) -> None:
    """Elections after a release are no takeovers; one after a killed leader is, and the
    new leader's previous_holder names it."""
    events: list[tuple[float, str, str]] = []
    a, b = (_elector(_lease(db_url, n), events) for n in ("a", "b"))
    try:
        a.start()
        _wait(lambda: a.is_leader, 5)
        assert (a.elections, a.takeovers, a.previous_holder) == (1, 0, None)
        assert 0 < a.remaining_s() <= LEASE_S - a.margin_s
        b.start()
        assert b.remaining_s() == 0.0
        a.stop(release=True)
        _wait(lambda: b.is_leader, 5)
        assert (b.elections, b.takeovers, b.previous_holder) == (1, 0, None)
        assert a.remaining_s() == 0.0 and a.demotions == 1
        b.stop(release=False)
        c = _elector(_lease(db_url, "c"), events)
        c.start()
        try:
            _wait(lambda: c.is_leader, LEASE_S + POLL_S + 3)
            assert (c.elections, c.takeovers, c.previous_holder) == (1, 1, "b")
        finally:
            c.stop()
    finally:
        b.stop()
        a.stop()


def test_leader_api_url_is_the_unexpired_holders(db_url: str, engine: Engine) -> None:
    """The URL of the node holding an unexpired lease; None without a lease, after it
    expired or was released, and when the holder advertised none."""
    a, b = _lease(db_url, "a", lease_s=0.4), _lease(db_url, "b", lease_s=0.4)
    assert a.leader_api_url() is None  # no lease row yet
    a.heartbeat("standby", started_ns=1, api_url="http://host-a:8080")
    b.heartbeat("standby", started_ns=1, api_url="http://host-b:8080")
    assert a.leader_api_url() is None  # nobody leads
    token = a.try_acquire()
    assert token is not None
    assert a.leader_api_url() == b.leader_api_url() == "http://host-a:8080"
    a.heartbeat("leader", started_ns=1)  # advertises no URL (API disabled)
    assert b.leader_api_url() is None
    a.heartbeat("leader", started_ns=1, api_url="http://host-a:9090")
    assert b.leader_api_url() == "http://host-a:9090"
    time.sleep(0.5)
    assert b.leader_api_url() is None  # expired
    token = b.try_acquire()
    assert token is not None and a.leader_api_url() == "http://host-b:8080"
    assert b.release(token)
    assert a.leader_api_url() is None
    # another group's leader is not ours
    other = LeaderLease(a.engine, "other-group", "x", int(5 * NS))
    other.heartbeat("leader", started_ns=1, api_url="http://host-x:1")
    assert other.try_acquire() is not None
    assert a.leader_api_url() is None and other.leader_api_url() == "http://host-x:1"
    assert {n.node_id: n.api_url for n in a.nodes()} == {"a": "http://host-a:9090",
                                                         "b": "http://host-b:8080"}


def test_a_database_at_leadership_version_1_gains_api_url(db_url: str) -> None:
    """A database created before ``api_url`` (leadership at version 1, a node recorded) is
    upgraded in place: the row is kept and the column is there to write and read."""
    v1 = sa.MetaData()
    sa.Table("leader_lease", v1,
             sa.Column("group_name", sa.String(64), primary_key=True),
             sa.Column("holder", sa.String(128), nullable=True),
             sa.Column("token", sa.BigInteger, nullable=False),
             sa.Column("acquired_ns", sa.BigInteger, nullable=False),
             sa.Column("renewed_ns", sa.BigInteger, nullable=False),
             sa.Column("expires_ns", sa.BigInteger, nullable=False))
    nodes_v1 = sa.Table("cluster_nodes", v1,
                        sa.Column("node_id", sa.String(128), primary_key=True),
                        sa.Column("group_name", sa.String(64), nullable=False),
                        sa.Column("host", sa.String(255), nullable=False),
                        sa.Column("pid", sa.Integer, nullable=False),
                        sa.Column("role", sa.String(16), nullable=False),
                        sa.Column("last_seen_ns", sa.BigInteger, nullable=False),
                        sa.Column("started_ns", sa.BigInteger, nullable=False),
                        sa.Column("last_takeover_ns", sa.BigInteger, nullable=True))
    old = sa.create_engine(db_url)
    migrate(old, {})  # the versions table
    with old.begin() as conn:
        v1.create_all(conn)
        conn.execute(nodes_v1.insert().values(node_id="old", group_name=GROUP, host="h",
                                              pid=1, role="standby", last_seen_ns=5,
                                              started_ns=1, last_takeover_ns=None))
        conn.execute(schema_versions.insert().values(component="leadership", version=1))
    old.dispose()
    eng = open_database(db_url)
    try:
        with eng.connect() as conn:
            version = conn.execute(sa.select(schema_versions.c.version).where(
                schema_versions.c.component == "leadership")).scalar_one()
        assert version == MIGRATIONS[-1][0] >= 2
        lease = LeaderLease(eng, GROUP, "old", int(5 * NS))
        assert [(n.node_id, n.last_seen_ns, n.api_url) for n in lease.nodes()] == [
            ("old", 5, None)]
        lease.heartbeat("leader", started_ns=1, api_url="http://old:8080")
        assert lease.try_acquire() == 1
        assert lease.leader_api_url() == "http://old:8080"
        assert migrate(eng, schema_components())["leadership"] == version  # idempotent
    finally:
        eng.dispose()


def test_ha_collector_reports_the_electors_state(db_url: str, engine: Engine) -> None:
    """The gauges and counters follow the elector: standby, leader with its token and
    time left, then a takeover by the other node and a demotion."""
    events: list[tuple[float, str, str]] = []
    a, b = (_elector(_lease(db_url, n), events) for n in ("a", "b"))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HaCollector(a))
    registry.register(HaCollector(b))

    def value(name: str, node: str) -> float | None:
        return registry.get_sample_value(name, {"node": node})

    try:
        assert value("lifeline_ha_leader", "a") == 0.0
        assert value("lifeline_ha_token", "a") == 0.0
        assert value("lifeline_ha_lease_remaining_seconds", "a") == 0.0
        a.start()
        _wait(lambda: a.is_leader, 5)
        b.start()
        assert value("lifeline_ha_leader", "a") == 1.0
        assert value("lifeline_ha_token", "a") == 1.0
        remaining = value("lifeline_ha_lease_remaining_seconds", "a")
        assert remaining is not None and 0 < remaining <= LEASE_S
        assert value("lifeline_ha_takeovers_total", "a") == 0.0  # a free lease
        assert value("lifeline_ha_leader", "b") == 0.0
        a.stop(release=False)
        _wait(lambda: b.is_leader, LEASE_S + POLL_S + 3)
        assert value("lifeline_ha_leader", "a") == 0.0
        assert value("lifeline_ha_demotions_total", "a") == 1.0
        assert value("lifeline_ha_leader", "b") == 1.0
        assert value("lifeline_ha_token", "b") == 2.0
        assert value("lifeline_ha_takeovers_total", "b") == 1.0
        assert value("lifeline_ha_demotions_total", "b") == 0.0
        text = generate_latest(registry).decode()
        assert 'lifeline_ha_takeovers_total{node="b"} 1.0' in text
        assert "# TYPE lifeline_ha_leader gauge" in text
    finally:
        b.stop()
        a.stop()
