"""Active/standby building blocks against real services: fenced writes (SQLite and the
PostgreSQL at 127.0.0.1:5432), the spool and the shared state in the database, the
InfluxDB writer handing its spool to the next leader, and the leader-gated MQTT
connection on a real Mosquitto."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from devtools.harness import ManagedService
from ingest.influx import InfluxV1Transport, InfluxWriter
from ingest.raw import RawBuffer
from ingest.spool_db import DatabaseSpool, spool_table
from ingest.subscriber import MqttOptions, MqttSubscriber
from lifeline.db import open_database
from lifeline.ha import fenced_engine
from lifeline.influxquery import count_values
from lifeline.leadership import LeaderElector, LeaderLease, NotLeader, leader_lease
from lifeline.shared_state import SharedState
from tests.support import wait_for

pytestmark = pytest.mark.integration

LEASE_NS = 3_000_000_000


class Node:
    """An elector (not started unless asked) and its fenced engine."""

    def __init__(self, url: str, plain: Engine, node_id: str) -> None:
        self.lease = LeaderLease(plain, "g", node_id, LEASE_NS)
        self.elector = LeaderElector(self.lease, renew_s=0.5, poll_s=0.1)
        self.engine = fenced_engine(url, self.elector.fence, 1.0)

    def lead(self) -> None:
        self.elector.start()
        assert wait_for(lambda: self.elector.is_leader, 10)

    def close(self) -> None:
        self.elector.stop(release=False)
        # database calls still running in its workers end before the database is dropped
        self.elector._pool.shutdown(wait=True)
        self.elector._beats.shutdown(wait=True)
        self.engine.dispose()


@pytest.fixture
def plain(db_url: str) -> Iterator[Engine]:
    engine = open_database(db_url)
    yield engine
    engine.dispose()


def expire_and_take(plain: Engine, node_id: str) -> None:
    """Another node takes the lease over (one statement, as ``try_acquire`` on an expired
    lease: the first node's elector cannot win it back in between)."""
    with plain.begin() as conn:
        conn.execute(leader_lease.update().values(
            holder=node_id, token=leader_lease.c.token + 1,
            expires_ns=time.time_ns() + 60 * LEASE_NS))


def test_writes_are_fenced_reads_are_not(db_url: str, plain: Engine) -> None:
    a = Node(db_url, plain, "a")
    try:
        state = SharedState(a.engine, "g", "a")
        with pytest.raises(NotLeader):  # standby: nothing is written
            state.save("rules", b"standby")
        assert state.load("rules") is None  # reads answer on a standby
        a.lead()
        state.save("rules", b"one")
        assert state.load("rules") is not None
        expire_and_take(plain, "b")  # the local deadline of a is still valid here
        with pytest.raises(NotLeader, match="no longer holds"):
            state.save("rules", b"late")
        with pytest.raises(NotLeader), a.engine.begin() as conn:  # raw SQL writes too
            conn.exec_driver_sql("DELETE FROM service_state")
        saved = state.load("rules")
        assert saved is not None and saved.body == b"one"
    finally:
        a.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # row locks
def test_takeover_update_waits_for_the_leaders_write(db_url: str, plain: Engine) -> None:
    a = Node(db_url, plain, "a")
    order: list[str] = []
    try:
        a.lead()
        with a.engine.begin() as conn:
            conn.execute(spool_table.insert().values(lines="x\n", line_count=1, size=2,
                                                     created_ns=1))

            def steal() -> None:
                with plain.begin() as other:  # b takes the lease over: waits for the lock
                    far = time.time_ns() + 60 * LEASE_NS
                    other.execute(leader_lease.update().values(
                        holder="b", token=leader_lease.c.token + 1, expires_ns=far))
                order.append("taken over")

            thief = threading.Thread(target=steal)
            thief.start()
            time.sleep(0.5)
            order.append("leader commits")
        thief.join(10)
        assert order == ["leader commits", "taken over"]
        with pytest.raises(NotLeader):
            SharedState(a.engine, "g", "a").save("rules", b"late")
    finally:
        a.close()


def test_database_spool_is_bounded_shared_and_fenced(db_url: str, plain: Engine) -> None:
    a = Node(db_url, plain, "a")
    try:
        spool = DatabaseSpool(a.engine, max_bytes=100)
        assert spool.put(["m v=1 1"]) is False and len(spool) == 0  # standby: refused
        a.lead()
        assert spool.put(["m v=1 1", "m v=2 2"])
        assert spool.put(["m v=3 3"])
        assert not spool.put(["m v=4 " + "9" * 200])  # does not fit: refused, not cut
        assert (len(spool), spool.refused) == (2, 2)
        other = DatabaseSpool(plain, max_bytes=100)  # the next leader sees the same chunks
        assert len(other) == 2 and other.bytes == spool.bytes
        first = spool.peek()
        assert first is not None and first.lines == ["m v=1 1", "m v=2 2"]
        spool.remove(first.seq)
        assert spool.lines_out == 2
        expire_and_take(plain, "b")
        assert not spool.put(["m v=5 5"])  # lost the lease: nothing more is stored
        last = spool.peek()
        assert last is not None
        with pytest.raises(Exception, match="cannot remove"):
            spool.remove(last.seq)
        assert len(DatabaseSpool(plain, max_bytes=100)) == 1
    finally:
        a.close()


def lines(n: int, measurement: str) -> list[str]:
    base = time.time_ns() - 3_600_000_000_000
    return [f"{measurement},device=d{i % 7} v={i} {base + i * 1000}" for i in range(n)]


def test_acknowledged_lines_in_the_database_spool_reach_influx_through_the_next_leader(
        db_url: str, plain: Engine, influxdb: ManagedService) -> None:
    """InfluxDB unreachable for leader a: lines go to the database spool and are
    acknowledged; a's machine is lost; leader b writes them from the database."""
    measurement = f"ha{uuid.uuid4().hex[:8]}"
    a = Node(db_url, plain, "a")
    try:
        a.lead()
        dead = InfluxV1Transport("http://127.0.0.1:9", "lifeline", timeout=0.5)
        writer = InfluxWriter(dead, batch_lines=500, retries=0,
                              spool=DatabaseSpool(a.engine, 10_000_000))
        acked = threading.Event()
        writer.start()
        writer.submit(lines(1200, measurement), acked.set)
        assert acked.wait(30)  # durable in the database: the broker may forget them
        writer.stop(timeout=1)
        assert writer.stats.lines_spooled == 1200
    finally:
        a.close()
    expire_and_take(plain, "b")
    writer = InfluxWriter(InfluxV1Transport(influxdb.info.url, "lifeline"), batch_lines=500,
                          spool=DatabaseSpool(plain, 10_000_000))
    writer.start()
    assert wait_for(lambda: count_values(influxdb.info.url, "lifeline", [measurement]) == 1200)
    assert wait_for(lambda: len(DatabaseSpool(plain, 1)) == 0)
    writer.stop()


def test_a_leader_gated_connection_does_not_take_the_session_back(
        mosquitto: ManagedService) -> None:
    """Mosquitto closes a taken-over session without a reason code; a gated subscriber
    stays away until told to rejoin (the node leads again)."""
    options = MqttOptions(port=mosquitto.info.port, client_id=f"gate-{uuid.uuid4().hex[:6]}",
                          leader_gated=True)
    old = MqttSubscriber(options, ["gate/#"], RawBuffer())
    new = MqttSubscriber(options, ["gate/#"], RawBuffer())
    try:
        old.start()
        new.start()
        assert wait_for(lambda: old.yielded and not old.connected, 10)
        time.sleep(2.5)  # longer than paho's reconnect delay: the old one must stay away
        assert new.connected and new.connects == 1 and not new.yielded
        assert not old.connected and old.connects == 1
        assert old.rejoin()
        assert wait_for(lambda: old.connected and new.yielded, 10)
        assert new.connects == 1 and old.connects == 2
    finally:
        old.stop()
        new.stop()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_frozen_leaders_open_write_cannot_hold_the_takeover_up(
        db_url: str, plain: Engine) -> None:
    """A leader frozen inside a fenced transaction (its FOR SHARE lock held): the server
    ends the idle transaction, the takeover goes through, the write is lost with it."""
    a = Node(db_url, plain, "a")  # idle transactions end after 1 s (fenced_engine)
    try:
        a.lead()
        conn = a.engine.connect()
        tx = conn.begin()
        conn.execute(spool_table.insert().values(lines="frozen\n", line_count=1, size=7,
                                                 created_ns=1))
        # ... and the process freezes here: no statement, no commit
        taken = threading.Event()

        def take_over() -> None:
            expire_and_take(plain, "b")
            taken.set()

        threading.Thread(target=take_over, daemon=True).start()
        assert taken.wait(15)
        with pytest.raises(Exception):  # noqa: B017 - the server closed the session
            tx.commit()
        conn.close()
        with plain.connect() as check:
            rows = check.execute(sa.select(spool_table.c.lines)).scalars().all()
        assert "frozen\n" not in rows
    finally:
        a.close()
