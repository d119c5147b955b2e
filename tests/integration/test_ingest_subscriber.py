"""Subscriber against real Mosquitto: shared subscriptions, MQTT 3.1.1 sessions, QoS 2, acks."""

from __future__ import annotations

import time
import uuid

import pytest

from devtools.harness import ManagedService
from ingest.batch import RawBuffer
from ingest.mqttsocket import READ_SIZE
from ingest.subscriber import MqttOptions, MqttSubscriber
from tests.support import publish_numbered

pytestmark = pytest.mark.integration


def wait_len(buffers: list[RawBuffer], n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(b) for b in buffers) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def test_shared_subscription_splits_the_load(mosquitto: ManagedService) -> None:
    prefix = f"s{uuid.uuid4().hex[:6]}"
    group = f"g{uuid.uuid4().hex[:6]}"
    buffers = [RawBuffer(), RawBuffer()]
    subs = [MqttSubscriber(MqttOptions(port=mosquitto.info.port, client_id=f"{group}-{i}",
                                       clean_start=True, shared_group=group),
                           [f"{prefix}/+/telemetry"], buffers[i]) for i in range(2)]
    for sub in subs:
        sub.start()
        assert sub.subscribed.wait(10)
    assert subs[0].topics == [f"$share/{group}/{prefix}/+/telemetry"]
    try:
        publish_numbered(mosquitto.info.port, [f"{prefix}/d{i}/telemetry" for i in range(200)], 1)
        wait_len(buffers, 200)
        got = [b.drain(1000) for b in buffers]
        assert len(got[0]) + len(got[1]) == 200  # each message to exactly one member
        assert got[0] and got[1]
        assert {m.payload for m in got[0]}.isdisjoint({m.payload for m in got[1]})
    finally:
        for sub in subs:
            sub.stop()


@pytest.mark.parametrize("protocol", [5, 311])
def test_persistent_session_keeps_unacknowledged_messages(mosquitto: ManagedService,
                                                          protocol: int) -> None:
    """QoS 1 messages received but not acknowledged come back to the next session; while
    away, the broker queues new ones."""
    prefix = f"p{uuid.uuid4().hex[:6]}"
    options = MqttOptions(port=mosquitto.info.port, client_id=f"{prefix}-c", protocol=protocol,
                          qos=2)
    buffer = RawBuffer()
    sub = MqttSubscriber(options, [f"{prefix}/+/telemetry"], buffer)
    sub.start()
    assert sub.subscribed.wait(10)
    publish_numbered(mosquitto.info.port, [f"{prefix}/a/telemetry"] * 5, 1)
    publish_numbered(mosquitto.info.port, [f"{prefix}/b/telemetry"] * 5, 2)
    wait_len([buffer], 10)
    first = buffer.drain(100)
    assert len(first) == 10 and {m.qos for m in first} == {1, 2}
    sub.ack(first[:4])  # only part is "stored"
    time.sleep(0.3)
    sub.stop()
    publish_numbered(mosquitto.info.port, [f"{prefix}/c/telemetry"] * 3, 1)  # while away
    buffer2 = RawBuffer()
    again = MqttSubscriber(options, [f"{prefix}/+/telemetry"], buffer2)
    again.start()
    try:
        wait_len([buffer2], 4)
        time.sleep(0.3)
        redelivered = buffer2.drain(100)
        # The unacknowledged QoS 1 message comes back; QoS 2 ones do not: paho answers
        # PUBREC on receipt, so the broker has handed them over (see README, "Ingest").
        unacked_qos1 = [m.payload for m in first[4:] if m.qos == 1]
        assert sorted(m.payload for m in redelivered) == sorted(
            [*unacked_qos1, b"m0", b"m1", b"m2"])
        assert again.acked == 0 and sub.acked == 4
        # An ack for a message of the old connection is not sent on the new one.
        again.ack(first[4:])
        assert again.stale_acks == 6 and again.acked == 0
        again.ack(redelivered)
        assert again.acked == len(redelivered)
    finally:
        again.stop()


def drain_slowly(buffer: RawBuffer, n: int, step: int, timeout: float = 30) -> list[bytes]:
    """Take ``step`` messages at a time, as a slow decoder would, until ``n`` arrived."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.02)
        got.extend(m.payload for m in buffer.drain(step))
    return got


def test_a_full_buffer_stops_reading_and_loses_nothing(mosquitto: ManagedService) -> None:
    """Flow control in one process: at the buffer's limit the network thread leaves the
    messages in the socket; the broker holds them until the decoder catches up."""
    prefix = f"h{uuid.uuid4().hex[:6]}"
    buffer = RawBuffer(limit=500)
    sub = MqttSubscriber(MqttOptions(port=mosquitto.info.port, client_id=f"{prefix}-c",
                                     qos=0, clean_start=True), [f"{prefix}/#"], buffer)
    sub.start()
    # a read turn stops at the limit after the packets of one 64 KiB read (~28 bytes each)
    bound = 500 + READ_SIZE // 28
    try:
        assert sub.subscribed.wait(10)
        total = 20_000
        publish_numbered(mosquitto.info.port, [f"{prefix}/d/telemetry"] * total, 0)
        wait_len([buffer], 500)
        time.sleep(1.0)
        assert 500 <= len(buffer) <= bound and sub.read_holds >= 1
        got = drain_slowly(buffer, total, 1000)
        assert got == [f"m{i}".encode() for i in range(total)]  # all, once, in order
        assert buffer.peak <= bound and sub.connected and sub.connects == 1
    finally:
        sub.stop()
