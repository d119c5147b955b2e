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
from sqlalchemy.engine import Engine

from bench.soak import TcpProxy
from lifeline import cli
from lifeline.db import open_database
from lifeline.leadership import (
    NS,
    LeaderElector,
    LeaderLease,
    NotLeader,
    lease_engine,
)
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
    """``lifeline status --json`` reads the tables: both nodes, the leader and its token."""
    config = tmp_path / "lifeline.toml"
    config.write_text(f'run_dir = "{tmp_path}"\n[database]\nurl = "{db_url}"\n'
                      f'[ha]\nenabled = true\ngroup = "{GROUP}"\n')
    events: list[tuple[float, str, str]] = []
    first, second = (_elector(_lease(db_url, n), events) for n in ("a", "b"))
    first.start()
    _wait(lambda: first.is_leader, 5)
    second.start()
    time.sleep(0.5)
    try:
        assert cli.main(["--config", str(config), "status", "--json"]) == 0
        doc = orjson.loads(capsys.readouterr().out)
        assert doc["leader"]["node_id"] == "a" and doc["leader"]["token"] == 1
        assert 0 <= doc["leader"]["lease_age_s"] < 5
        assert {n["node_id"]: n["role"] for n in doc["nodes"]} == {"a": "leader",
                                                                   "b": "standby"}
        assert doc["last_takeover_ns"] is not None
        assert cli.main(["--config", str(config), "status"]) == 0
        text = capsys.readouterr().out
        assert "leader: a  token 1" in text and "standby" in text
    finally:
        second.stop()
        first.stop()
