"""Hand-off pieces of the network process: the bulk PUBLISH reader, the batch sink,
the raw buffer and the logging set-up that crosses into the process."""

from __future__ import annotations

import gc
import logging
import pickle
import socket
import threading
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from ingest.batch import RawBuffer, RawMessage
from ingest.gctuning import GC_THRESHOLDS, tune_gc_for_throughput
from ingest.mqttsocket import BufferedSocket, FastClient
from ingest.netproc import ChildStatus, _BatchSink, _service_logging, _setup_child_logging
from lifeline.logs import JsonFormatter, RedactingFilter
from lifeline.redaction import REDACTED
from tests.support import remaining_length


def publish(topic: bytes, payload: bytes, qos: int, mid: int, v5: bool,
            props: bytes = b"") -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    if v5:
        body += remaining_length(len(props)) + props
    body += payload
    return bytes([0x30 | qos << 1]) + remaining_length(len(body)) + body


# (topic, payload, qos, mid, with properties); qos 2 and properties are paho's to decode
packet_specs = st.lists(st.tuples(
    st.binary(min_size=1, max_size=20), st.binary(max_size=300), st.sampled_from([0, 1, 2]),
    st.integers(1, 65535), st.booleans()), min_size=1, max_size=30)


@pytest.fixture(scope="module")
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
@settings(max_examples=300, deadline=None)
@given(specs=packet_specs, cut=st.floats(0, 1))
def test_take_publishes_takes_exactly_the_whole_fast_packets_before_the_cut(
        sockets: tuple[socket.socket, socket.socket], v5: bool,
        specs: list[tuple[bytes, bytes, int, int, bool]], cut: float) -> None:
    packets = [publish(t, p, q, m, v5, b"\x26\x00\x01k\x00\x01v" if props and v5 else b"")
               for t, p, q, m, props in specs]
    stream = b"".join(packets)
    end = int(len(stream) * cut)
    got: list[tuple[bytes, bytes, int, int]] = []
    client = FastClient(CallbackAPIVersion.VERSION2, client_id="unit", manual_ack=True,
                        protocol=MQTTProtocolVersion.MQTTv5 if v5 else
                        MQTTProtocolVersion.MQTTv311)
    client.on_raw_publish = lambda t, p, mid, q: got.append((t, p, mid, q))
    sock = BufferedSocket(sockets[0])
    sock._buf, sock._pos = stream[:end], 0
    taken = client.take_publishes(sock)
    # the reference: whole packets in order until one paho must see or the cut
    expected, pos = [], 0
    for (topic, payload, qos, mid, props), packet in zip(specs, packets, strict=True):
        if pos + len(packet) > end or qos == 2 or (props and v5):
            break
        expected.append((topic, payload, mid if qos else 0, qos))
        pos += len(packet)
    assert taken == len(expected)
    assert got == expected
    assert sock.buffered() == end - pos  # the rest is left for paho's read
    assert stream[:end][len(stream[:end]) - sock.buffered():] == stream[pos:end]


def test_take_publishes_leaves_malformed_lengths_to_paho(
        sockets: tuple[socket.socket, socket.socket]) -> None:
    client = FastClient(CallbackAPIVersion.VERSION2, client_id="unit", manual_ack=True,
                        protocol=MQTTProtocolVersion.MQTTv5)
    got: list[object] = []
    client.on_raw_publish = lambda *a: got.append(a)
    sock = BufferedSocket(sockets[0])
    good = publish(b"a", b"1", 1, 7, True)
    for bad in (b"\x30\xff\xff\xff\xff\x01",  # a fifth length byte
                b"\x32\x01\x00",  # too short for its topic length
                b"\x32\x04\x00\x01a\x00"):  # QoS 1 without a whole packet id
        sock._buf, sock._pos = good + bad + good, 0
        got.clear()
        assert client.take_publishes(sock) == 1
        assert got == [(b"a", b"1", 7, 1)]
        assert sock.buffered() == len(bad) + len(good)
    # An empty topic: MQTT 3.1.1 leaves it to paho; with MQTT 5 and no alias it is handed
    # over as it is (as paho's own decode would) and the decoder dead-letters it (bad_topic).
    sock._buf, sock._pos = b"\x30\x03\x00\x00\x00", 0
    got.clear()
    assert client.take_publishes(sock) == 1 and got == [(b"", b"", 0, 0)]
    old = FastClient(CallbackAPIVersion.VERSION2, client_id="unit", manual_ack=True,
                     protocol=MQTTProtocolVersion.MQTTv311)
    old.on_raw_publish = lambda *a: got.append(a)
    sock._buf, sock._pos = b"\x30\x02\x00\x00", 0
    assert old.take_publishes(sock) == 0 and sock.buffered() == 4


def test_batch_sink_loses_nothing_between_threads() -> None:
    sink = _BatchSink()
    total = 200_000

    def produce() -> None:
        for i in range(total):
            sink.put("t", b"", i, 0, 0, 1)

    producer = threading.Thread(target=produce)
    producer.start()
    seen: list[int] = []
    while producer.is_alive() or sink.items:
        seen.extend(item[2] for item in sink.take())
    producer.join()
    seen.extend(item[2] for item in sink.take())
    assert seen == list(range(total))
    assert sink.received == total


def test_raw_buffer_put_extend_and_wake() -> None:
    buffer = RawBuffer(wake_at=3)
    buffer.put("t", b"1", 1, 2, 1, 5)
    assert buffer.drain(10) == [RawMessage("t", b"1", 1, 2, 1, 5)]
    buffer.extend([RawMessage("t", b"x", 0), RawMessage("t", b"y", 0)])
    assert not buffer._ready.is_set()
    buffer.extend([RawMessage("t", b"z", 0)])
    assert buffer._ready.is_set()  # wake_at reached
    buffer.wait(0)
    assert not buffer._ready.is_set()
    buffer.wake()
    assert buffer._ready.is_set()
    assert [m.payload for m in buffer.drain(2)] == [b"x", b"y"] and len(buffer) == 1


def test_child_status_crosses_the_pipe() -> None:
    status = ChildStatus(True, 2, 1_000_001, True, 5, 1, 2, 3, 99, 4)
    assert pickle.loads(pickle.dumps(status)) == status


def test_logging_set_up_crosses_with_json_and_redaction(
        capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(["s3cret-value"]))
    try:
        root.handlers = [handler]
        root.setLevel(logging.DEBUG)
        level, handlers = pickle.loads(pickle.dumps(_service_logging()))
        root.handlers = []
        _setup_child_logging(level, handlers)
        assert root.level == logging.DEBUG
        logging.getLogger("ingest.subscriber").info("password is %s", "s3cret-value")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        doc = orjson.loads(line)
        assert doc["logger"] == "ingest.subscriber" and doc["msg"] == f"password is {REDACTED}"

        class Unpicklable(logging.Formatter):
            def __reduce__(self) -> object:
                raise TypeError("no")

        odd = logging.StreamHandler()
        odd.setFormatter(Unpicklable())
        root.handlers = [odd]
        assert _service_logging()[1] == []  # falls back to plain lines
        root.handlers = []
        _setup_child_logging(logging.INFO, [])
        logging.getLogger("x").warning("plain")
        assert "WARNING x: plain" in " ".join(capsys.readouterr().err.split())
    finally:
        root.handlers, root.level = saved[0], saved[1]


def test_gc_tuning_of_the_service_process() -> None:
    before = gc.get_threshold()
    try:
        tune_gc_for_throughput()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # start-up objects out of collection
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_raw_buffer_limit_full_peak_and_drain_callback() -> None:
    buffer = RawBuffer(wake_at=2, limit=4)
    drains: list[int] = []
    buffer.on_drain = lambda: drains.append(len(buffer))
    buffer.extend([RawMessage("t", b"x", 0)] * 3)
    assert not buffer.full()
    buffer.put("t", b"y", 0, 0, 0, 0)
    assert buffer.full() and buffer.peak == 4
    buffer.extend([RawMessage("t", b"z", 0)] * 2)  # the network side may overshoot a turn
    assert buffer.full() and buffer.peak == 6
    assert len(buffer.drain(3)) == 3 and not buffer.full()
    assert buffer.drain(10)[-1].payload == b"z" and drains == [3, 0]
    assert buffer.peak == 6  # the peak stays
    unlimited = RawBuffer(limit=0)
    unlimited.extend([RawMessage("t", b"x", 0)] * 1000)
    assert not unlimited.full()


def test_batch_sink_is_full_at_its_window_of_unconsumed_messages() -> None:
    sink = _BatchSink(window=5)
    for i in range(4):
        sink.put("t", b"x", i, 0, 0, 1)
    assert not sink.full()
    sink.put("t", b"x", 4, 0, 0, 1)
    assert sink.full()
    assert len(sink.take()) == 5 and sink.full()  # sent, but not yet taken by the decoder
    sink.consumed = 3
    assert not sink.full()
    sink.put("t", b"x", 5, 0, 0, 1)
    sink.put("t", b"x", 6, 0, 0, 1)
    assert not sink.full()  # 7 read, 3 consumed
    sink.put("t", b"x", 7, 0, 0, 1)
    assert sink.full()
    assert not _BatchSink().full()  # window 0: no limit
