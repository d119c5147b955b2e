"""The service as an active/standby leader (lifeline.service with a LeaderTerm) against
real Mosquitto, InfluxDB and the PostgreSQL at 127.0.0.1:5432: what it acknowledges,
and that a node which lost the lease writes nothing anywhere."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from sqlalchemy.engine import Engine

from alerts.lifecycle.store import alerts as alerts_table
from devices.catalogue import Catalogue
from devices.model import Device
from devices.registry import read_inventory, write_inventory
from devices.store import DeviceStore
from devtools.harness import ManagedService
from lifeline.db import open_database
from lifeline.ha import fenced_engine
from lifeline.influxquery import count_values
from lifeline.leadership import LeaderElector, LeaderLease, leader_lease
from lifeline.service import LeaderTerm, Service
from lifeline.settings import (
    ApiSettings,
    DatabaseSettings,
    DevicesSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
    Settings,
)
from tests.support import wait_for

pytestmark = pytest.mark.integration

LEASE_NS = 3_000_000_000


@pytest.fixture
def plain(db_url: str) -> Iterator[Engine]:
    engine = open_database(db_url)
    yield engine
    engine.dispose()


def settings_for(tmp_path: Path, url: str, mqtt_port: int, influx_url: str, db: str) -> Settings:
    inventory = tmp_path / "inventory.csv"
    write_inventory(inventory, [Device("gas-1", "gas_alarm", grid="G1")])
    return Settings(
        run_dir=tmp_path / "run",
        database=DatabaseSettings(url=url),
        mqtt=MqttSettings(port=mqtt_port, client_id=f"ha-{db}", qos=1),
        influx=InfluxSettings(url=influx_url, database=db, flush_interval=0.05, retries=0),
        ingest=IngestSettings(metrics_interval="1h", flush_interval=0.05),
        devices=DevicesSettings(inventory=inventory),
        api=ApiSettings(enabled=False),
    )


class Leader:
    """A node that leads (its elector runs) and its service, run as `serve` runs it."""

    def __init__(self, settings: Settings, plain: Engine) -> None:
        assert settings.devices.inventory is not None
        DeviceStore(plain).upsert_many(read_inventory(settings.devices.inventory,
                                                      Catalogue.builtin()))
        lease = LeaderLease(plain, "lifeline", "a", LEASE_NS)
        self.elector = LeaderElector(lease, renew_s=0.5, poll_s=0.1)
        self.elector.start()
        assert wait_for(lambda: self.elector.is_leader, 10)
        self.engine = fenced_engine(settings.database_url, self.elector.fence, 1.0)
        term = LeaderTerm("a", "lifeline", self.engine, lambda: self.elector.is_leader)
        self.service = Service(settings, term)
        self.stop = threading.Event()
        self.db = ""  # the InfluxDB database of its readings
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        assert self.service.subscriber.subscribed.wait(30)

    def _run(self) -> None:
        self.service.start(api=False)
        self.service.run(self.stop)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        self.elector.stop(release=False)
        self.elector._pool.shutdown(wait=True)  # its database calls end before the drop
        self.elector._beats.shutdown(wait=True)
        self.engine.dispose()


def publish(port: int, lel: float, seq: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    body = orjson.dumps({"ts": time.time_ns() // 1_000_000, "seq": seq, "values": {"lel": lel}})
    client.publish("lifeline/gas-1/telemetry", body, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def alert_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(alerts_table)
                                .where(alerts_table.c.device_id == "gas-1")).scalar_one())


@pytest.fixture
def leader(tmp_path: Path, db_url: str, plain: Engine, mosquitto: ManagedService,
           influxdb: ManagedService) -> Iterator[Leader]:
    """The leading node's service, with an InfluxDB database of its own (``leader.db``)."""
    db = f"ha{uuid.uuid4().hex[:8]}"
    node = Leader(settings_for(tmp_path, db_url, mosquitto.info.port, influxdb.info.url, db),
                  plain)
    node.db = db
    try:
        yield node
    finally:
        node.service.writer.stop(timeout=1)  # after a lost lease its writes never succeed
        node.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_message_is_acknowledged_only_once_its_alert_is_committed(
        leader: Leader, plain: Engine, mosquitto: ManagedService,
        influxdb: ManagedService) -> None:
    db = leader.db
    service = leader.service
    acked = service.subscriber.acked
    with plain.connect() as blocker:  # the alerts table is locked: no alert can commit
        tx = blocker.begin()
        blocker.exec_driver_sql("LOCK TABLE alerts IN ACCESS EXCLUSIVE MODE")
        publish(mosquitto.info.port, 60.0, 1)  # above the builtin 50 %LEL limit
        assert wait_for(lambda: count_values(influxdb.info.url, db, ["gas_alarm"]) == 1)

        def alerts_waiting() -> bool:
            with plain.connect() as conn:
                return bool(conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted").scalar_one())

        assert wait_for(alerts_waiting)  # the alert's transaction waits for the lock
        assert service.subscriber.acked == acked  # stored, but its alert is not: no ack
        tx.rollback()
    assert wait_for(lambda: service.subscriber.acked == acked + 1)
    assert alert_rows(plain) >= 1


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_node_that_lost_the_lease_writes_and_acknowledges_nothing(
        leader: Leader, plain: Engine, mosquitto: ManagedService,
        influxdb: ManagedService) -> None:
    db = leader.db
    service = leader.service
    publish(mosquitto.info.port, 10.0, 1)
    assert wait_for(lambda: count_values(influxdb.info.url, db, ["gas_alarm"]) == 1)
    assert wait_for(lambda: service.subscriber.acked >= 1)
    acked = service.subscriber.acked
    with plain.begin() as conn:  # another node takes the lease over
        conn.execute(leader_lease.update().values(
            holder="b", token=leader_lease.c.token + 1,
            expires_ns=time.time_ns() + 60 * LEASE_NS))
    assert wait_for(lambda: not leader.elector.is_leader, 10)  # a stepped down
    received = service.stats.received
    publish(mosquitto.info.port, 70.0, 2)  # would fire, and be stored
    assert wait_for(lambda: service.stats.received > received)
    time.sleep(2.0)  # the writer retries in this time; nothing may get through
    assert count_values(influxdb.info.url, db, ["gas_alarm"]) == 1
    assert service.subscriber.acked == acked  # the broker keeps it for the new leader
    assert alert_rows(plain) == 0
    with plain.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM ingest_spool").scalar_one() == 0
