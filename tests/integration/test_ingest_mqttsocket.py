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

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from ingest.batch import RawBuffer
from ingest.mqttsocket import BufferedClient, BufferedSocket, FastClient
from ingest.subscriber import MqttOptions, MqttSubscriber
from lifeline.harness import ManagedService
from tests.support import wait_for

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


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH, QoS 0."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + payload
    return b"\x30" + _remaining(len(body)) + body


def publish_v5(topic: str, payload: bytes, *, qos: int = 0, mid: int = 0, props: bytes = b"",
               dup: bool = False, retain: bool = False) -> bytes:
    """An MQTT 5 PUBLISH with the given encoded properties."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t
    if qos:
        body += mid.to_bytes(2, "big")
    body += _remaining(len(props)) + props + payload
    header = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    return bytes([header]) + _remaining(len(body)) + body


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
        packets.append(bytes([0x3B]) + _remaining(len(body)) + body)  # dup, QoS 1, retain
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
