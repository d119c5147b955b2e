"""InfluxDB writer and MQTT subscriber against the real services."""

from __future__ import annotations

import time
import uuid

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices.model import Device
from devices.series import SeriesTable
from devtools.harness import ManagedService, free_port
from ingest.batch import Batch, RawBuffer
from ingest.errors import BrokerUnavailableError, WriteError
from ingest.influx import InfluxV1Transport, InfluxWriter
from ingest.lineproto import batch_lines
from ingest.subscriber import MqttOptions, MqttSubscriber
from lifeline.influxquery import count_values, influxql

pytestmark = pytest.mark.integration


def test_writer_stores_every_line_in_chunks(influxdb: ManagedService) -> None:
    table = SeriesTable()
    devices = [Device(f"w{i}", "water_pressure", grid="G1") for i in range(50)]
    sids = [table.id_for(d, "pressure") for d in devices]
    n = 12_345
    now = time.time_ns()
    batch = Batch(series=np.array([sids[i % 50] for i in range(n)], dtype=np.int64),
                  ts_ns=np.array([now - i * 1000 for i in range(n)], dtype=np.int64),
                  value=np.linspace(0.1, 0.5, n), flags=np.zeros(n, dtype=np.uint16))
    db = f"w{uuid.uuid4().hex[:8]}"
    transport = InfluxV1Transport(influxdb.info.url, db, gzip_body=True)
    transport.create_database()
    writer = InfluxWriter(transport, batch_lines=5000)
    writer.start()
    writer.submit(batch_lines(batch, table))
    writer.stop()
    assert writer.stats.lines_written == n
    assert writer.stats.batches_written == 3
    assert count_values(influxdb.info.url, db, ["water_pressure"]) == n


def test_writer_retries_until_influx_returns(influxdb: ManagedService) -> None:
    """A retryable failure (server down) is retried; nothing is lost when it returns."""
    port = free_port()
    transport = InfluxV1Transport(f"http://127.0.0.1:{port}", "x", timeout=1)
    with pytest.raises(WriteError) as info:
        transport.write(["m v=1 1"])
    assert info.value.retryable
    bad = InfluxV1Transport(influxdb.info.url, "lifeline")
    with pytest.raises(WriteError) as info:
        bad.write(["this is not line protocol"])
    assert not info.value.retryable


def test_subscriber_buffers_messages_and_reports_unreachable_broker(
    mosquitto: ManagedService,
) -> None:
    buffer = RawBuffer()
    sub = MqttSubscriber(MqttOptions(port=mosquitto.info.port, client_id="t-sub",
                                     clean_start=True), ["t/+/telemetry"], buffer)
    sub.start()
    try:
        deadline = time.monotonic() + 5
        while not sub.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", mosquitto.info.port)
        pub.loop_start()
        infos = [pub.publish(f"t/d{i}/telemetry", b"x" * i, qos=1) for i in range(100)]
        for info in infos:
            info.wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        deadline = time.monotonic() + 5
        while len(buffer) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        msgs = buffer.drain(1000)
        assert len(msgs) == 100
        assert {m.topic for m in msgs} == {f"t/d{i}/telemetry" for i in range(100)}
    finally:
        sub.stop()
    dead = MqttSubscriber(MqttOptions(port=free_port(), connect_timeout_s=1.0), ["x"], buffer)
    with pytest.raises(BrokerUnavailableError, match="unreachable"):
        dead.start()


def test_influxql_helper_reports_query_errors(influxdb: ManagedService) -> None:
    with pytest.raises(ValueError, match="InfluxQL error"):
        influxql(influxdb.info.url, "lifeline", "SELECT FROM WHERE")
