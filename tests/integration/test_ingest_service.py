"""The whole ingest path in the real service: restarts, InfluxDB outages, back-pressure, DLQ."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prometheus_client import REGISTRY, generate_latest
from pydantic import SecretStr

from devices.model import Device
from devices.registry import write_inventory
from devtools.harness import ManagedService, start_influxdb
from ingest.deadletter import DeadLetterStore
from ingest.mqttsocket import READ_SIZE
from ingest.netproc import SESSION_RANGE, ProcessSubscriber
from lifeline.app import create_app
from lifeline.auth import token_digest
from lifeline.influxquery import count_values, influxql
from lifeline.service import Service
from lifeline.settings import (
    ApiSettings,
    ApiToken,
    DevicesSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
    Settings,
)
from tests.support import wait_for

pytestmark = pytest.mark.integration
DEVICES = 40


def make_settings(tmp_path: Path, mqtt_port: int, influx_url: str, db: str,
                  grid: str = "G1", network_process: bool = True,
                  **ingest: object) -> Settings:
    inventory = tmp_path / "inventory.csv"
    if not inventory.exists():
        write_inventory(inventory, [Device(f"gas-{i:03d}", "gas_alarm", grid=grid)
                                    for i in range(DEVICES)])
    return Settings(
        run_dir=tmp_path / "run",
        mqtt=MqttSettings(port=mqtt_port, client_id=f"svc-{db}", qos=1,
                          network_process=network_process),
        influx=InfluxSettings(url=influx_url, database=db, flush_interval=0.05, retries=1),
        ingest=IngestSettings(metrics_interval="1h", spool_fsync=False,
                              flush_interval=0.05, **ingest),  # type: ignore[arg-type]
        devices=DevicesSettings(inventory=inventory),
        api=ApiSettings(enabled=False),
    )


class Running:
    """A Service running in a thread, as `lifeline serve` runs it."""

    def __init__(self, settings: Settings) -> None:
        self.service = Service(settings)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        self.service.start()
        self.service.run(self.stop_event)

    def __enter__(self) -> Service:
        self.thread.start()
        assert self.service.subscriber.subscribed.wait(30)
        return self.service

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


class Publisher(threading.Thread):
    """Publishes ``total`` single-reading messages at QoS 1, ``rate`` per second."""

    def __init__(self, port: int, total: int, rate: float, topic_of: object = None) -> None:
        super().__init__(daemon=True)
        self.port, self.total, self.rate = port, total, rate
        self.sent = 0
        self.base_ms = time.time_ns() // 1_000_000 - 600_000

    def run(self) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        client.max_inflight_messages_set(500)
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        started = time.monotonic()
        info = None
        for i in range(self.total):
            dev, k = i % DEVICES, i // DEVICES
            body = orjson.dumps({"ts": self.base_ms + k, "seq": k,
                                 "values": {"lel": (i % 200) / 10}})
            info = client.publish(f"lifeline/gas-{dev:03d}/telemetry", body, qos=1)
            self.sent += 1
            ahead = self.sent / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        if info is not None:
            info.wait_for_publish(30)
        client.disconnect()
        client.loop_stop()




@pytest.fixture
def own_influx(tmp_path: Path) -> Iterator[ManagedService]:
    """An InfluxDB of this test alone: it is stopped and started mid-stream."""
    service = start_influxdb(tmp_path / "influx", database="lifeline")
    try:
        yield service
    finally:
        service.stop()


@pytest.mark.parametrize("network_process", [True, False], ids=["net-process", "one-process"])
def test_restart_of_the_service_mid_stream_loses_nothing(
    tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService, network_process: bool
) -> None:
    db = f"rs{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, mosquitto.info.port, influxdb.info.url, db,
                             network_process=network_process)
    total = 12_000
    pub = Publisher(mosquitto.info.port, total, rate=2000)
    with Running(settings) as first:
        pub.start()
        assert wait_for(lambda: first.stats.received > 1000, 20)
    sent_while_running = pub.sent
    assert sent_while_running < total  # stopped mid-stream
    time.sleep(0.5)  # the broker queues for the persistent session meanwhile
    with Running(settings) as second:
        pub.join(60)
        def stored() -> int:
            return count_values(influxdb.info.url, db, ["gas_alarm"])

        assert wait_for(lambda: stored() >= total, 30)
        time.sleep(0.5)
        assert stored() == total
        assert second.stats.dead_lettered == 0
    assert first.subscriber.acked > 0 and second.subscriber.acked > 0


def test_network_process_killed_mid_stream_loses_nothing(
    tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService
) -> None:
    """SIGKILL of the MQTT network process: the service starts another, the broker
    redelivers what was not acknowledged, the decoder drops what was already stored."""
    db = f"nk{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, mosquitto.info.port, influxdb.info.url, db)
    total = 8_000
    pub = Publisher(mosquitto.info.port, total, rate=2000)
    with Running(settings) as service:
        subscriber = service.subscriber
        assert isinstance(subscriber, ProcessSubscriber)
        first_pid, first_session = subscriber.pid, subscriber.session
        assert first_pid is not None
        pub.start()
        assert wait_for(lambda: service.stats.received > 1500, 20)
        assert pub.sent < total  # killed mid-stream
        os.kill(first_pid, signal.SIGKILL)
        assert wait_for(lambda: subscriber.restarts == 1 and subscriber.connected, 30)
        assert subscriber.pid != first_pid
        # numbered in a new range: acks for the dead process's connection are refused
        assert subscriber.session > first_session + SESSION_RANGE // 2
        pub.join(60)

        def stored() -> int:
            return count_values(influxdb.info.url, db, ["gas_alarm"])

        assert wait_for(lambda: stored() >= total, 40)
        time.sleep(0.5)
        assert stored() == total
        assert service.stats.dead_lettered == 0
        metrics = generate_latest(REGISTRY).decode()
        assert "lifeline_ingest_network_process_restarts 1.0" in metrics
        assert "lifeline_ingest_mqtt_connected 1.0" in metrics
    assert subscriber.acked > 0


def test_influxdb_stop_and_start_mid_stream_loses_nothing(
    tmp_path: Path, mosquitto: ManagedService, own_influx: ManagedService
) -> None:
    url = own_influx.info.url
    settings = make_settings(tmp_path, mosquitto.info.port, url, "lifeline")
    total = 6000
    pub = Publisher(mosquitto.info.port, total, rate=2000)
    with Running(settings) as service:
        pub.start()
        assert wait_for(lambda: service.stats.stored_lines > 500, 20)
        own_influx.stop()
        assert wait_for(lambda: service.writer.stats.lines_spooled > 0, 20)
        time.sleep(1)
        own_influx.start()
        pub.join(60)
        assert wait_for(lambda: count_values(url, "lifeline", ["gas_alarm"]) >= total, 60)
        assert len(service.spool) == 0
        assert service.writer.stats.lines_replayed == service.writer.stats.lines_spooled
    assert count_values(url, "lifeline", ["gas_alarm"]) == total
    # The shutdown wrote the self-metrics point, with the spool counted in it.
    row = influxql(url, "lifeline", "SELECT last(received), last(spooled_lines), "
                   "last(stored_lines) FROM lifeline_ingest")[0]["values"][0]
    assert row[1] >= total and row[2] > 0 and row[3] >= total


def test_full_spool_holds_acknowledgements_and_loses_nothing(
    tmp_path: Path, mosquitto: ManagedService, own_influx: ManagedService
) -> None:
    url = own_influx.info.url
    settings = make_settings(tmp_path, mosquitto.info.port, url, "lifeline",
                             spool_max_bytes=1 << 20, batch_messages=500)
    total = 30_000  # ~2.4 MB of line protocol: more than twice the spool
    with Running(settings) as service:
        own_influx.stop()
        pub = Publisher(mosquitto.info.port, total, rate=10_000)
        pub.start()
        pub.join(60)
        assert wait_for(lambda: service.spool.refused > 0, 30)
        time.sleep(1)
        # Held back: fewer acknowledged than received, spool at its cap, nothing dropped.
        acked = service.subscriber.acked
        assert acked < total
        assert service.spool.bytes <= 1 << 20
        assert service.writer.stats.lines_dropped == 0
        own_influx.start()
        assert wait_for(lambda: count_values(url, "lifeline", ["gas_alarm"]) >= total, 90)
        assert wait_for(lambda: service.subscriber.acked >= total, 30)
        assert service.writer.stats.blocked_s > 0
    assert count_values(url, "lifeline", ["gas_alarm"]) == total


def test_a_backlog_larger_than_the_raw_buffer_comes_in_windows(
    tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService
) -> None:
    """The broker queued more for the persistent session than ``raw_buffer_max``: the
    network process (faster than the decoder) stops reading at the window each time and
    the broker holds the rest; everything is stored once."""
    db = f"bw{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, mosquitto.info.port, influxdb.info.url, db,
                             raw_buffer_max=10_000)
    with Running(settings):
        pass  # the persistent session exists now
    total = 60_000
    pub = Publisher(mosquitto.info.port, total, rate=100_000)
    pub.run()  # while the service is away
    with Running(settings) as service:
        def stored() -> int:
            return count_values(influxdb.info.url, db, ["gas_alarm"])

        assert wait_for(lambda: stored() >= total, 60)
        time.sleep(0.5)
        assert stored() == total
        assert service.subscriber.read_holds >= 1
        # the window, one read turn past it (64 KiB of ~80-byte packets) and what was
        # crossing the pipe before the decoder's count came back
        assert service.buffer.peak <= 10_000 + READ_SIZE // 80 + 2 * 2000
        metrics = generate_latest(REGISTRY).decode()
        assert "lifeline_ingest_read_holds" in metrics
        assert "lifeline_ingest_raw_buffer_peak" in metrics


def test_dead_letters_listed_shown_and_replayed_through_the_api(
    tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService
) -> None:
    db = f"dl{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, mosquitto.info.port, influxdb.info.url, db)
    tokens = [ApiToken(name="v", role="viewer", sha256=token_digest("viewer-token")),
              ApiToken(name="o", role="operator", sha256=token_digest("operator-token")),
              ApiToken(name="a", role="admin", sha256=token_digest("admin-token"))]
    now_ms = time.time_ns() // 1_000_000
    with Running(settings) as service:
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", mosquitto.info.port)
        client.loop_start()
        client.publish("lifeline/newcomer/telemetry",
                       orjson.dumps({"ts": now_ms, "values": {"lel": 4.5}}), qos=1)
        client.publish("lifeline/gas-001/telemetry", b"\xff\x00 binary junk", qos=1)
        client.publish("lifeline/gas-002/status", b"sleeping", qos=1).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        assert wait_for(lambda: service.stats.dead_lettered == 3, 10)
        metrics = generate_latest(REGISTRY).decode()
        assert 'lifeline_ingest_dead_lettered_total{reason="not_json"} 2.0' in metrics
        assert 'lifeline_ingest_dead_lettered_total{reason="unknown_device"} 1.0' in metrics
        assert "lifeline_ingest_spool_bytes 0.0" in metrics
        assert "lifeline_ingest_write_latency_seconds_bucket" in metrics
        app = create_app(settings.model_copy(update={"api": ApiSettings(tokens=tokens)}),
                         service.db)
        api = TestClient(app)
        viewer = {"Authorization": "Bearer viewer-token"}
        operator = {"Authorization": "Bearer operator-token"}
        admin = {"Authorization": "Bearer admin-token"}
        assert api.get("/api/v1/dlq").status_code == 401
        page = api.get("/api/v1/dlq", headers=viewer).json()
        assert page["count"] == 3
        by_reason = {d["reason"]: d for d in page["data"]}
        assert set(by_reason) == {"unknown_device", "not_json"}
        junk = api.get(f"/api/v1/dlq/{by_reason['not_json']['id']}", headers=viewer).json()
        assert junk["payload_encoding"] in ("base64", "utf-8")
        assert api.get("/api/v1/dlq/999999", headers=viewer).status_code == 404
        assert api.get("/api/v1/dlq?limit=0", headers=viewer).status_code == 422
        newcomer = by_reason["unknown_device"]
        body = {"ids": [newcomer["id"]]}
        assert api.post("/api/v1/dlq/replay", json=body, headers=viewer).status_code == 403
        assert api.post("/api/v1/dlq/replay", json=body, headers=operator).status_code == 403
        assert api.post("/api/v1/dlq/replay", json={}, headers=admin).status_code == 422
        assert api.post("/api/v1/dlq/replay", json={"reason": "write_rejected"},
                        headers=admin).status_code == 422
        # The admin registers the device, then replays: the reading lands.
        service.device_store.create(Device("newcomer", "gas_alarm", grid="G9"))
        service.registry.invalidate("newcomer")
        resp = api.post("/api/v1/dlq/replay", json=body, headers=admin)
        assert resp.status_code == 202 and resp.json() == {"marked": 1}
        assert wait_for(lambda: count_values(influxdb.info.url, db, ["gas_alarm"]) == 1, 15)
        assert wait_for(lambda: service.ingest.dlq_replayed == 1, 5)
        store = DeadLetterStore(service.db)
        assert store.get(newcomer["id"]) is None
        assert store.total() == 2
        # Replaying letters that are still bad dead-letters them again, with new ids.
        old_ids = {d["id"] for d in page["data"] if d["reason"] == "not_json"}
        assert len(old_ids) == 2
        assert store.request_replay(reason="not_json") == 2
        assert wait_for(lambda: service.ingest.dlq_replayed == 3, 10)
        again = store.list(reason="not_json")
        assert len(again) == 2 and min(r.id for r in again) > max(old_ids)
        assert {r.letter.topic for r in again} == {"lifeline/gas-001/telemetry",
                                                   "lifeline/gas-002/status"}


def test_dead_letter_cap_evicts_the_oldest_and_counts(tmp_path: Path) -> None:
    from ingest.deadletter import DeadLetter, Reason
    from lifeline.db import open_database

    store = DeadLetterStore(open_database(f"sqlite:///{tmp_path / 'x.db'}"), max_rows=100)
    for batch in range(5):
        store.add_many([DeadLetter("t", f"{batch}-{i}".encode(), Reason.NOT_JSON, "d", i)
                        for i in range(30)])
    assert store.total() == 100
    assert store.evicted == 50
    assert store.counts["dlq_overflow"] == 50
    assert store.list(limit=1000)[-1].letter.payload == b"1-20"


def test_service_writes_through_the_v2_api(tmp_path: Path, mosquitto: ManagedService,
                                           victoria: ManagedService) -> None:
    """influx.version = 2: the same path into a server speaking the v2 write API."""
    import httpx

    tag = uuid.uuid4().hex[:8]
    base = make_settings(tmp_path, mosquitto.info.port, victoria.info.url, "unused",
                         grid=f"grid-{tag}")
    settings = base.model_copy(update={
        "influx": InfluxSettings(url=victoria.info.url, version=2, org="city",
                                 bucket=f"b{tag}", token=SecretStr("secret-token"),
                                 flush_interval=0.05),
        "mqtt": MqttSettings(port=mosquitto.info.port, client_id=f"v2-{tag}", qos=1),
    })
    total = 400
    with Running(settings) as service:
        pub = Publisher(mosquitto.info.port, total, rate=4000)
        pub.start()
        pub.join(30)
        assert wait_for(lambda: service.ingest.readings >= total, 20)
        assert wait_for(lambda: service.writer.pending() == 0, 10)

    def exported() -> int:
        httpx.get(f"{victoria.info.url}/internal/force_flush", timeout=10)
        resp = httpx.get(f"{victoria.info.url}/api/v1/export",
                         params={"match[]": f'{{__name__="gas_alarm_lel",grid="grid-{tag}"}}'},
                         timeout=10)
        resp.raise_for_status()
        return len({(s["metric"]["device"], t)
                    for s in (orjson.loads(x) for x in resp.text.splitlines() if x)
                    for t in s["timestamps"]})

    assert wait_for(lambda: exported() >= total, 20)
    assert exported() == total


def test_lines_influxdb_refuses_are_dead_lettered_as_write_rejected(
    tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService
) -> None:
    """A field type conflict (lel stored as a string earlier) makes InfluxDB refuse lines."""
    import httpx

    db = f"wr{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, mosquitto.info.port, influxdb.info.url, db)
    with Running(settings) as service:
        pub = Publisher(mosquitto.info.port, 5, rate=100)
        httpx.post(f"{influxdb.info.url}/write", params={"db": db},
                   content=f'gas_alarm,device=x lel="broken" {pub.base_ms * 1_000_000}',
                   timeout=10).raise_for_status()
        pub.start()
        pub.join(10)
        assert wait_for(lambda: service.ingest.dead_by_reason["write_rejected"] == 5, 20)
    letters = DeadLetterStore(service.db).list(reason="write_rejected")
    assert len(letters) == 5
    assert all(dl.letter.topic == "influx:write" and b"gas_alarm," in dl.letter.payload
               and "field type conflict" in dl.letter.detail for dl in letters)
