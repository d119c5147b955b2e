"""Buffered socket reads under paho (ingest.mqttsocket), on real sockets.

* BufferedSocket on a socket pair: small reads served from one large recv,
  ``pending()`` counts what is buffered, an empty buffer raises like the socket.
* A scripted MQTT peer on a real TCP socket sends PUBLISH packets cut at every
  possible place (inside the remaining-length bytes, inside the topic, inside the
  body), bursts of whole packets in one segment followed by silence (bytes left in
  the userspace buffer must not wait for more traffic), and a 1 MiB payload.
* The subscriber (BufferedClient) against the real Mosquitto: many small messages
  and large payloads interleaved, every byte intact and in order.
"""

from __future__ import annotations

import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from devtools.harness import ManagedService
from ingest.batch import RawBuffer
from ingest.mqttsocket import BufferedClient, BufferedSocket, FastClient
from ingest.subscriber import MqttOptions, MqttSubscriber
from tests.support import remaining_length, wait_for

pytestmark = pytest.mark.integration


def test_buffered_socket_serves_small_reads_from_one_recv() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    sock = BufferedSocket(a, read_size=64)
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        b.sendall(bytes(range(100)))
        time.sleep(0.05)
        assert sock.recv(1) == b"\x00"
        assert sock.buffered() == 63 and sock.pending() == 63  # one recv of 64 bytes
        assert sock.recv(2) == b"\x01\x02"
        assert sock.recv(1000) == bytes(range(3, 64))  # the rest of the buffer, no recv
        assert sock.pending() == 0
        assert sock.recv(1000) == bytes(range(64, 100))  # larger than read_size: direct
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        b.close()
        assert sock.recv(10) == b""  # EOF passes through
    finally:
        sock.close()


# --------------------------------------------------------------------------- scripted peer


def publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH, QoS 0."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + payload
    return b"\x30" + remaining_length(len(body)) + body


def publish_v5(topic: str, payload: bytes, *, qos: int = 0, mid: int = 0, props: bytes = b"",
               dup: bool = False, retain: bool = False) -> bytes:
    """An MQTT 5 PUBLISH with the given encoded properties."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t
    if qos:
        body += mid.to_bytes(2, "big")
    body += remaining_length(len(props)) + props + payload
    header = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    return bytes([header]) + remaining_length(len(body)) + body


class ScriptedBroker:
    """Accepts one MQTT client, answers CONNECT with CONNACK, then runs a script."""

    def __init__(self, v5: bool = False) -> None:
        self.v5 = v5
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.ready = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = conn.recv(1)
        assert first == b"\x10"  # CONNECT
        length, mult = 0, 1
        while True:
            byte = conn.recv(1)[0]
            length += (byte & 0x7F) * mult
            mult *= 128
            if not byte & 0x80:
                break
        while length:
            length -= len(conn.recv(length))
        conn.sendall(b"\x20\x03\x00\x00\x00" if self.v5 else b"\x20\x02\x00\x00")  # CONNACK
        self.conn = conn
        self.ready.set()

    def send(self, data: bytes, pause: float = 0.0) -> None:
        assert self.conn is not None
        self.conn.sendall(data)
        if pause:
            time.sleep(pause)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedBroker, mqtt.Client, list[tuple[str, bytes]]]]:
    broker = ScriptedBroker()
    got: list[tuple[str, bytes]] = []
    client = BufferedClient(CallbackAPIVersion.VERSION2, client_id="scripted",
                            protocol=MQTTProtocolVersion.MQTTv311)
    client.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload)))
    client.connect("127.0.0.1", broker.port, keepalive=600)
    client.loop_start()
    assert broker.ready.wait(5)
    assert isinstance(client.socket(), BufferedSocket)
    try:
        yield broker, client, got
    finally:
        client.disconnect()
        client.loop_stop()
        broker.close()


def test_packets_cut_at_every_place_arrive_whole(
    scripted: tuple[ScriptedBroker, mqtt.Client, list[tuple[str, bytes]]],
) -> None:
    broker, _client, got = scripted
    # 200-byte payload: the remaining length takes two bytes, so cuts land inside it too.
    packet = publish_packet("t/split", bytes(range(200)))
    expected = []
    for cut in range(1, len(packet)):
        broker.send(packet[:cut], pause=0.002)  # the rest arrives in a later read
        broker.send(packet[cut:])
        expected.append(("t/split", bytes(range(200))))
    assert wait_for(lambda: len(got) >= len(expected), 20)
    assert got == expected


def test_a_burst_in_one_segment_is_delivered_without_further_traffic(
    scripted: tuple[ScriptedBroker, mqtt.Client, list[tuple[str, bytes]]],
) -> None:
    """Bytes read ahead into the userspace buffer must not wait behind select()."""
    broker, _client, got = scripted
    burst = b"".join(publish_packet(f"t/{i}", b"x%d" % i) for i in range(3000))
    tail = publish_packet("t/tail", b"last")
    broker.send(burst + tail[:3])  # 3,000 whole packets and a cut one, then silence
    assert wait_for(lambda: len(got) >= 3000, 10), len(got)
    assert got == [(f"t/{i}", b"x%d" % i) for i in range(3000)]
    time.sleep(0.1)
    assert len(got) == 3000  # the cut packet waits for its bytes
    broker.send(tail[3:])
    assert wait_for(lambda: len(got) == 3001, 5)
    assert got[-1] == ("t/tail", b"last")


def test_large_payload_between_small_ones(
    scripted: tuple[ScriptedBroker, mqtt.Client, list[tuple[str, bytes]]],
) -> None:
    broker, _client, got = scripted
    big = bytes(i % 251 for i in range(1 << 20))
    stream = (publish_packet("t/a", b"a") + publish_packet("t/big", big)
              + publish_packet("t/b", b"b"))
    for start in range(0, len(stream), 100_003):  # odd-sized segments
        broker.send(stream[start:start + 100_003])
    assert wait_for(lambda: len(got) >= 3, 20)
    assert got == [("t/a", b"a"), ("t/big", big), ("t/b", b"b")]


def _receive(client_class: type[mqtt.Client], v5: bool, stream: bytes,
             count: int) -> list[tuple[object, ...]]:
    broker = ScriptedBroker(v5=v5)
    got: list[tuple[object, ...]] = []

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        got.append((m.topic, m.payload, type(m.payload), m.qos, m.mid, m.dup, m.retain,
                    None if m.properties is None else str(m.properties),
                    None if m.properties is None else m.properties.packetType,
                    m.properties is not None and m.properties.isEmpty()))  # type: ignore[no-untyped-call]

    client = client_class(CallbackAPIVersion.VERSION2, client_id="eq",
                          protocol=MQTTProtocolVersion.MQTTv5 if v5 else
                          MQTTProtocolVersion.MQTTv311)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port, keepalive=600)
    client.loop_start()
    try:
        assert broker.ready.wait(5)
        broker.send(stream)
        assert wait_for(lambda: len(got) >= count, 10)
    finally:
        client.disconnect()
        client.loop_stop()
        broker.close()
    return got


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
def test_fast_publish_decode_gives_what_paho_gives(v5: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """FastClient's PUBLISH decode against stock paho on the same bytes, incl. the cases
    it hands back to paho (properties present) and odd ones (empty payload, flags)."""
    content_type = b"\x03" + len(b"app/json").to_bytes(2, "big") + b"app/json"
    user = b"\x26" + b"\x00\x01k" + b"\x00\x01v"
    if v5:
        packets = [publish_v5("a/b", b"plain"), publish_v5("a/\u00e9", b"", qos=1, mid=7),
                   publish_v5("r", b"x" * 300, retain=True, dup=True, qos=1, mid=65535),
                   publish_v5("p", b"with props", props=content_type + user),
                   publish_v5("q", b"\x00\x01", qos=1, mid=9, props=user)]
    else:
        packets = [publish_packet("a/b", b"plain"), publish_packet("a/\u00e9", b""),
                   publish_packet("r", b"x" * 300)]
        body = b"\x00\x02qq" + (1234).to_bytes(2, "big") + b"payload"
        packets.append(bytes([0x3B]) + remaining_length(len(body)) + body)  # dup, QoS 1, retain
    stream = b"".join(packets)
    stock = _receive(mqtt.Client, v5, stream, len(packets))
    paho_decodes = []
    original = mqtt.Client._handle_publish

    def counting(self: mqtt.Client) -> object:
        paho_decodes.append(1)
        return original(self)

    monkeypatch.setattr(mqtt.Client, "_handle_publish", counting)
    fast = _receive(FastClient, v5, stream, len(packets))
    assert fast == stock
    assert len(stock) == len(packets)
    assert len(paho_decodes) == (2 if v5 else 0)  # only the packets with properties


def test_raw_sink_and_batched_pubacks_on_the_wire() -> None:
    """``on_raw_publish`` gets what paho's message would carry (packets with properties
    still take paho's path), and ``ack_batch`` puts PUBACKs on the wire in order, mixed
    with single acks exactly as if sent apart."""
    broker = ScriptedBroker(v5=True)
    raw: list[tuple[bytes, bytes, int, int]] = []
    via_paho: list[tuple[str, bytes, int, int]] = []
    client = FastClient(CallbackAPIVersion.VERSION2, client_id="raw",
                        protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
    client.on_raw_publish = lambda t, p, mid, q: raw.append((t, p, mid, q))
    client.on_message = lambda c, u, m: via_paho.append((m.topic, m.payload, m.mid, m.qos))
    client.connect("127.0.0.1", broker.port, keepalive=600)
    client.loop_start()
    try:
        assert broker.ready.wait(5)
        user = b"\x26" + b"\x00\x01k" + b"\x00\x01v"
        broker.send(publish_v5("a/\u00e9", b"one", qos=1, mid=1)
                    + publish_v5("b", b"", qos=0)
                    + publish_v5("c", b"three", qos=1, mid=258, props=user)
                    + publish_v5("d", b"\x00four", qos=1, mid=65535))
        assert wait_for(lambda: len(raw) + len(via_paho) >= 4, 10)
        assert raw == [("a/\u00e9".encode(), b"one", 1, 1), (b"b", b"", 0, 0),
                       (b"d", b"\x00four", 65535, 1)]
        assert via_paho == [("c", b"three", 258, 1)]
        client.ack_batch([1, 65535])
        client.ack(258, 1)
        client.ack_batch([])  # nothing queued
        assert broker.conn is not None
        broker.conn.settimeout(5)
        wire = b""
        while len(wire) < 12:
            wire += broker.conn.recv(100)
        assert wire == (b"\x40\x02\x00\x01" b"\x40\x02\xff\xff" b"\x40\x02\x01\x02")
    finally:
        client.disconnect()
        client.loop_stop()
        broker.close()


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bulk_read_delivers_a_mixed_stream_cut_anywhere_in_order(v5: bool, seed: int) -> None:
    """The bulk PUBLISH reader and paho's own read share one stream: packets it must
    leave to paho (QoS 2, properties, PINGRESP), payloads larger than the read buffer,
    four-byte lengths, and segments cut at random places; every message once, in order."""
    rng = random.Random(seed)
    user = b"\x26" + b"\x00\x01k" + b"\x00\x01v"
    packets: list[bytes] = []
    expected: list[tuple[bytes, bytes, int, int]] = []
    for i in range(400):
        qos = rng.choice([0, 0, 1, 1, 1, 2])
        mid = (i + 1 if qos == 2 else rng.randint(1, 65535)) if qos else 0
        size = rng.choice([0, 1, 30, 120, 127, 128, 16_383, 16_384, 70_000, 2_100_000]
                          if i % 40 == 0 else [0, 1, 30, 120, 127, 128])
        payload = bytes([i % 256]) * size
        topic = f"t/{i}/\u00e9"
        props = user if v5 and i % 17 == 0 else b""
        if v5:
            packets.append(publish_v5(topic, payload, qos=qos, mid=mid, props=props))
        else:
            t = topic.encode()
            body = len(t).to_bytes(2, "big") + t + (mid.to_bytes(2, "big") if qos else b"")
            packets.append(bytes([0x30 | qos << 1]) + remaining_length(len(body + payload))
                           + body + payload)
        expected.append((topic.encode(), payload, mid, qos))
        if qos == 2:  # paho hands a QoS 2 message over on PUBREL
            packets.append(b"\x62\x02" + mid.to_bytes(2, "big"))
        if i % 23 == 0:
            packets.append(b"\xd0\x00")  # PINGRESP: paho's
    stream = b"".join(packets)
    broker = ScriptedBroker(v5=v5)
    got: list[tuple[bytes, bytes, int, int]] = []
    client = FastClient(CallbackAPIVersion.VERSION2, client_id=f"bulk{seed}", manual_ack=True,
                        protocol=MQTTProtocolVersion.MQTTv5 if v5 else
                        MQTTProtocolVersion.MQTTv311)
    client.on_raw_publish = lambda t, p, mid, q: got.append((t, p, mid, q))
    client.on_message = lambda c, u, m: got.append((bytes(m._topic), bytes(m.payload),
                                                    m.mid, m.qos))
    bulk = [0]
    take = client.take_publishes

    def counting(sock: BufferedSocket) -> int:
        bulk[0] += (n := take(sock))
        return n

    client.take_publishes = counting  # type: ignore[method-assign]
    client.connect("127.0.0.1", broker.port, keepalive=600)
    client.loop_start()
    try:
        assert broker.ready.wait(5)
        pos = 0
        while pos < len(stream):
            step = rng.choice([1, 2, 3, 5, 64, 1000, 65_535, 65_537, 200_000])
            broker.send(stream[pos:pos + step], pause=0.001 if rng.random() < 0.05 else 0)
            pos += step
        assert wait_for(lambda: len(got) >= len(expected), 30)
        time.sleep(0.1)
        assert len(got) == len(expected)
        assert got == expected
        assert len(expected) // 2 < bulk[0] < len(expected)  # both readers had a share
    finally:
        client.disconnect()
        client.loop_stop()
        broker.close()


# --------------------------------------------------------------------------- real broker


def test_subscriber_through_mosquitto_small_and_large_messages(
    mosquitto: ManagedService,
) -> None:
    prefix = f"x{uuid.uuid4().hex[:10]}"
    buffer = RawBuffer()
    sub = MqttSubscriber(MqttOptions(port=mosquitto.info.port, client_id=f"buf-{prefix}",
                                     clean_start=True, qos=1), [f"{prefix}/+/telemetry"],
                         buffer)
    assert isinstance(sub.client, FastClient)
    sub.start()
    try:
        assert sub.subscribed.wait(10)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        pub.max_inflight_messages_set(1000)
        pub.connect("127.0.0.1", mosquitto.info.port)
        pub.loop_start()
        sent: list[bytes] = []
        infos = []
        for i in range(10_000):
            big = i % 2500 == 1250  # 300 kB: spans many reads
            body = bytes((i + k) % 256 for k in range(300_000)) if big else b"%d" % i
            sent.append(body)
            infos.append(pub.publish(f"{prefix}/d{i % 10}/telemetry", body, qos=i % 2))
        for info in infos:
            info.wait_for_publish(30)
        pub.disconnect()
        pub.loop_stop()
        assert wait_for(lambda: len(buffer) >= len(sent), 30), len(buffer)
        got = buffer.drain(len(sent) + 10)
        sub.ack(got)
    finally:
        sub.stop()
    # Every byte intact, nothing lost or doubled; order is kept within each QoS level
    # (the broker may interleave QoS 0 and QoS 1 deliveries differently).
    assert sorted(m.payload for m in got) == sorted(sent)
    for qos in (0, 1):
        assert [m.payload for m in got if m.qos == qos] == sent[qos::2]
    assert sub.acked == 5_000
