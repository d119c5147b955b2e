"""The MQTT network process against real Mosquitto: hand-off, acks, pause, crashes, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from devtools.harness import ManagedService, free_port
from ingest.batch import RawBuffer, RawMessage
from ingest.errors import BrokerRejectedError, BrokerUnavailableError
from ingest.mqttsocket import READ_SIZE
from ingest.netproc import SESSION_RANGE, ProcessSubscriber
from ingest.subscriber import MqttOptions, MqttSubscriber
from tests.support import publish_numbered, wait_for

pytestmark = pytest.mark.integration


def take(buffer: RawBuffer, n: int, timeout: float = 20) -> list[RawMessage]:
    assert wait_for(lambda: len(buffer) >= n, timeout), f"{len(buffer)} of {n} arrived"
    time.sleep(0.2)  # nothing more should come
    return buffer.drain(100_000)


def options(port: int, prefix: str, **kw: object) -> MqttOptions:
    return MqttOptions(port=port, client_id=f"{prefix}-net", **kw)  # type: ignore[arg-type]


def started(port: int, **kw: object) -> tuple[str, MqttOptions, RawBuffer, ProcessSubscriber]:
    """A network process subscribed to a fresh prefix: (prefix, options, buffer, it)."""
    prefix = f"n{uuid.uuid4().hex[:6]}"
    opts = options(port, prefix, **kw)
    buffer = RawBuffer()
    sub = ProcessSubscriber(opts, [f"{prefix}/+/telemetry"], buffer)
    sub.start()
    return prefix, opts, buffer, sub


def test_messages_cross_in_order_and_acks_reach_the_broker(mosquitto: ManagedService) -> None:
    prefix, opts, buffer, sub = started(mosquitto.info.port)
    try:
        assert sub.subscribed.wait(10) and sub.connected and sub.connects == 1
        assert sub.pid is not None and sub.pid != os.getpid()
        assert sub.session > SESSION_RANGE
        publish_numbered(mosquitto.info.port,
                         [f"{prefix}/d{i % 7}/telemetry" for i in range(3000)], 1)
        got = take(buffer, 3000)
        assert [m.payload for m in got] == [f"m{i}".encode() for i in range(3000)]
        assert all(isinstance(m, RawMessage) and m.qos == 1 and m.session == sub.session
                   and m.topic == f"{prefix}/d{i % 7}/telemetry" for i, m in enumerate(got))
        assert all(m.received_at_ns <= time.time_ns() for m in got)
        sub.ack(got)
        assert wait_for(lambda: sub.acked == 3000, 10)
        assert sub.stale_acks == 0
    finally:
        sub.stop()
    # every PUBACK (sent as concatenated batches) reached the broker: nothing comes back
    again_buffer = RawBuffer()
    again = MqttSubscriber(opts, [f"{prefix}/+/telemetry"], again_buffer)
    again.start()
    try:
        assert again.subscribed.wait(10)
        time.sleep(0.5)
        assert len(again_buffer) == 0
    finally:
        again.stop()


def test_unacknowledged_messages_come_back_and_old_acks_are_refused(
        mosquitto: ManagedService) -> None:
    prefix, opts, buffer, sub = started(mosquitto.info.port, qos=2)
    assert sub.subscribed.wait(10)
    publish_numbered(mosquitto.info.port, [f"{prefix}/a/telemetry"] * 6, 1)
    publish_numbered(mosquitto.info.port, [f"{prefix}/b/telemetry"] * 4, 2, tag="q")
    first = take(buffer, 10)
    assert sorted(m.qos for m in first) == [1] * 6 + [2] * 4
    sub.ack([m for m in first if m.qos == 1][:2] + [m for m in first if m.qos == 2])
    assert wait_for(lambda: sub.acked == 6, 10)
    sub.stop()
    publish_numbered(mosquitto.info.port, [f"{prefix}/c/telemetry"] * 3, 1, tag="away")
    buffer2 = RawBuffer()
    again = ProcessSubscriber(opts, [f"{prefix}/+/telemetry"], buffer2)
    again.start()
    try:
        redelivered = take(buffer2, 7)
        assert sorted(m.payload for m in redelivered) == sorted(
            [b"m2", b"m3", b"m4", b"m5", b"away0", b"away1", b"away2"])
        assert again.session > sub.session + SESSION_RANGE - 1  # numbered in a new range
        again.ack(first)  # the old connection's messages: not acknowledged on this one
        assert wait_for(lambda: again.stale_acks == 10, 10)
        again.ack(redelivered)
        assert wait_for(lambda: again.acked == 7, 10)
    finally:
        again.stop()


def test_pause_hands_over_everything_taken_and_defers_the_rest(
        mosquitto: ManagedService) -> None:
    prefix, opts, buffer, sub = started(mosquitto.info.port)
    try:
        assert sub.subscribed.wait(10)
        publish_numbered(mosquitto.info.port, [f"{prefix}/a/telemetry"] * 50, 1)
        assert wait_for(lambda: sub.status.received == 50, 10)
        sub.pause()
        assert len(buffer) == 50  # in the buffer when pause() returns
        publish_numbered(mosquitto.info.port, [f"{prefix}/a/telemetry"] * 5, 1, tag="late")
        assert wait_for(lambda: sub.status.deferred == 5, 10)
        assert len(buffer) == 50
        sub.ack(buffer.drain(100))
    finally:
        sub.stop()
    assert sub.acked == 50  # the acks sent before stop() went out with it
    buffer2 = RawBuffer()
    again = MqttSubscriber(opts, [f"{prefix}/+/telemetry"], buffer2)
    again.start()
    try:
        assert sorted(m.payload for m in take(buffer2, 5)) == [
            f"late{i}".encode() for i in range(5)]
    finally:
        again.stop()


def test_a_killed_network_process_is_replaced_and_nothing_is_lost(
        mosquitto: ManagedService) -> None:
    prefix, _opts, buffer, sub = started(mosquitto.info.port)
    try:
        assert sub.subscribed.wait(10)
        publish_numbered(mosquitto.info.port, [f"{prefix}/a/telemetry"] * 300, 1)
        before = take(buffer, 300)
        old_pid, old_session = sub.pid, sub.session
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        assert wait_for(lambda: sub.restarts == 1 and sub.subscribed.is_set(), 30)
        assert sub.pid != old_pid and sub.session > old_session + SESSION_RANGE - 1
        redelivered = take(buffer, 300)  # never acknowledged: the broker sends them again
        assert sorted(m.payload for m in redelivered) == sorted(m.payload for m in before)
        sub.ack(before)
        assert wait_for(lambda: sub.stale_acks == 300, 10) and sub.acked == 0
        sub.ack(redelivered)
        assert wait_for(lambda: sub.acked == 300, 10)
        assert sub.connects == 2
    finally:
        sub.stop()


def test_the_network_process_ignores_sigterm_and_ends_with_its_service(
        mosquitto: ManagedService) -> None:
    """A SIGTERM to the process group reaches the child too: it stays until the service
    has stopped it. When the service dies without stopping it, it exits by itself."""
    script = (
        "import sys, time\n"
        "from ingest.batch import RawBuffer\n"
        "from ingest.netproc import ProcessSubscriber\n"
        "from ingest.subscriber import MqttOptions\n"
        "if __name__ == '__main__':\n"
        f"    sub = ProcessSubscriber(MqttOptions(port={mosquitto.info.port},"
        f" client_id='orphan-{uuid.uuid4().hex[:6]}', clean_start=True), ['x/#'], RawBuffer())\n"
        "    sub.start()\n"
        "    print(sub.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, signal.SIGTERM)
        time.sleep(0.5)
        os.kill(child, 0)  # still there
        parent.kill()
        parent.wait(10)

        def gone() -> bool:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{child}/stat", encoding="ascii") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not reaped

        assert wait_for(gone, 10)
    finally:
        parent.kill()


def test_start_errors_are_those_of_the_subscriber(tmp_path: object) -> None:
    with pytest.raises(BrokerUnavailableError, match="unreachable"):
        ProcessSubscriber(MqttOptions(port=free_port(), connect_timeout_s=1.0), ["x"],
                          RawBuffer()).start()
    with pytest.raises(BrokerRejectedError, match="tls_ca_file"):
        ProcessSubscriber(MqttOptions(port=free_port(), tls=True,
                                      tls_ca_file="/nonexistent/ca.pem"), ["x"],
                          RawBuffer()).start()


def test_a_full_buffer_holds_the_network_process_past_keepalive(
        mosquitto: ManagedService) -> None:
    """Flow control across the pipe: the network process reads at most ``limit`` messages
    the decoder has not taken; a hold longer than the keep-alive keeps the connection."""
    prefix = f"w{uuid.uuid4().hex[:6]}"
    buffer = RawBuffer(limit=1000)
    sub = ProcessSubscriber(options(mosquitto.info.port, prefix, keepalive_s=5),
                            [f"{prefix}/+/telemetry"], buffer)
    sub.start()
    # the window, plus what one read turn may take past it (one 64 KiB read of ~30-byte
    # packets), plus what crossed the pipe before the count came back
    bound = 1000 + READ_SIZE // 28 + 2000
    try:
        assert sub.subscribed.wait(10)
        total = 20_000
        publish_numbered(mosquitto.info.port, [f"{prefix}/d/telemetry"] * total, 1)
        assert wait_for(lambda: len(buffer) >= 1000, 20)
        time.sleep(12)  # nothing taken: held for more than two keep-alive periods
        assert 1000 <= len(buffer) <= bound and sub.read_holds >= 1
        assert sub.connected and sub.connects == 1  # no keep-alive timeout
        got: list[RawMessage] = []
        deadline = time.monotonic() + 60
        while len(got) < total and time.monotonic() < deadline:
            time.sleep(0.02)
            batch = buffer.drain(1500)
            sub.ack(batch)
            got.extend(batch)
        assert [m.payload for m in got] == [f"m{i}".encode() for i in range(total)]
        assert buffer.peak <= bound
        assert wait_for(lambda: sub.acked == total, 10) and sub.connects == 1
    finally:
        sub.stop()
