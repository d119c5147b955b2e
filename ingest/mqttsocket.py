"""Buffered socket reads and a lighter PUBLISH decode for paho-mqtt 2.x.

paho reads every packet with several ``recv`` calls (the command byte, each byte of
the remaining length, then the body) and, when nothing is in flight, reads one
packet per ``select()``. At tens of thousands of small messages per second those
system calls are a large part of the network thread's time. :class:`BufferedClient`
wraps the connection in a :class:`BufferedSocket` that fills a userspace buffer with
one ``recv`` of up to 64 KiB and serves paho's small reads from it, and reads
packets while the buffer holds bytes.

Bytes left in the buffer are never stranded behind ``select()``: paho's loop asks
``sock.pending()`` (meant for the TLS record buffer) and skips the wait while it is
non-zero; :meth:`BufferedSocket.pending` counts the userspace buffer plus the TLS
layer's own pending bytes. Everything else is delegated to the wrapped (plain or
TLS) socket.

:class:`FastClient` adds a PUBLISH decode for the common case: with MQTT 5, paho
builds two-dozen-entry ``Properties`` tables and clears them twice for every
message, even when the message has no properties (about 40 % of the network
thread's time at QoS 0). A PUBLISH whose property length is 0 gets a copy of one
prepared empty ``Properties(PUBLISH)`` instead; anything else (properties present,
QoS 2, MQTT 3.1.1 with an empty topic, ``on_log``/``enable_logger``) takes paho's
own ``_handle_publish``. The message, callbacks and acknowledgements are the same.
A client whose ``on_raw_publish`` is set hands those messages to it as
``(topic bytes, payload, mid, qos)`` without building an ``MQTTMessage``; it also
takes whole PUBLISH packets straight from the read buffer in one loop, without
paho's per-packet reads (:meth:`FastClient.take_publishes`); any other packet, a
PUBLISH it would hand to paho, and a packet cut by the end of the buffer go through
paho's ``_packet_read``. :meth:`FastClient.ack_batch` queues the PUBACKs of many
QoS 1 messages as one write.

Flow control: while the client's ``hold`` says the consumer is full, a connected
client reads nothing; the bytes stay in the socket, TCP pushes back and the broker
holds the messages (its queue limits apply). Writes (acknowledgements, PINGREQs) go
on, so the broker sees a live client; the bytes waiting in the socket count as
signs of life for paho's own keep-alive check (a PINGRESP waits behind them).
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

READ_SIZE = 65536
MAX_PACKETS_PER_READ = 2000  # then paho writes (acks, pings) before reading on
_PUBACK = struct.Struct("!BBH")  # PUBACK, remaining length 2, packet id (reason 0 omitted)
RawPublishSink = Callable[[bytes, bytes, int, int], None]
HOLD_SLEEP_S = 0.01  # a held client's wait per loop turn: select() returns at once


class BufferedSocket:
    """A socket whose ``recv`` reads ahead into a userspace buffer."""

    __slots__ = ("_buf", "_pos", "_read_size", "_sock")

    def __init__(self, sock: socket.socket | ssl.SSLSocket, read_size: int = READ_SIZE) -> None:
        self._sock = sock
        self._read_size = read_size
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes: from the buffer, else from one large ``recv``.

        Raises what the wrapped socket raises (``BlockingIOError``,
        ``ssl.SSLWantReadError``, ``OSError``) only when the buffer is empty.
        """
        pos = self._pos
        left = len(self._buf) - pos
        if left > 0:
            if bufsize >= left:
                chunk = self._buf[pos:] if pos else self._buf
                self._buf, self._pos = b"", 0
                return chunk
            self._pos = pos + bufsize
            return self._buf[pos:pos + bufsize]
        data = self._sock.recv(max(bufsize, self._read_size))
        if len(data) <= bufsize:
            return data
        self._buf, self._pos = data, bufsize
        return data[:bufsize]

    def fill(self) -> int:
        """With the buffer empty, one ``recv`` into it; the bytes now buffered (0 when
        nothing is readable yet, at EOF or on an error: paho's own read reports those)."""
        if self._pos < len(self._buf):
            return len(self._buf) - self._pos
        try:
            data = self._sock.recv(self._read_size)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError, OSError):
            return 0
        if not data:  # EOF: leave it to paho's next read, which sees it too
            return 0
        self._buf, self._pos = data, 0
        return len(data)

    def buffered(self) -> int:
        """Bytes received from the kernel and not yet handed to paho."""
        return len(self._buf) - self._pos

    def pending(self) -> int:
        """Bytes readable without waiting: the userspace buffer plus the TLS layer's."""
        inner = self._sock.pending() if isinstance(self._sock, ssl.SSLSocket) else 0
        return len(self._buf) - self._pos + inner

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Send on the wrapped socket."""
        return self._sock.send(data)

    def fileno(self) -> int:
        """The wrapped socket's descriptor (what ``select()`` waits on)."""
        return self._sock.fileno()

    def setblocking(self, flag: bool) -> None:
        """Delegate."""
        self._sock.setblocking(flag)

    def close(self) -> None:
        """Close the wrapped socket and drop the buffer."""
        self._buf, self._pos = b"", 0
        self._sock.close()

    @property
    def wrapped(self) -> socket.socket | ssl.SSLSocket:
        """The socket underneath."""
        return self._sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BufferedClient(mqtt.Client):
    """A paho client whose connections read through a :class:`BufferedSocket`."""

    hold: Callable[[], bool] | None = None  # True: the consumer is full, read nothing
    holds = 0  # times reading was held
    _holding = False

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if isinstance(sock, (socket.socket, ssl.SSLSocket)):  # not websockets
            return BufferedSocket(sock)
        return sock

    def held(self) -> bool:
        """Whether to skip this read (flow control, see the module docstring); waits a
        little when it does."""
        hold = self.hold
        if hold is None or not hold() or not self.is_connected():
            self._holding = False
            return False
        if not self._holding:
            self._holding = True
            self.holds += 1
        # We are only asked to read when bytes wait in the socket: the broker is there.
        # paho would take the unread bytes for silence and close the connection after a
        # keep-alive period; its PINGREQs still go out, their answers wait behind the data.
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        self._ping_t = 0
        time.sleep(HOLD_SLEEP_S)
        return True

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read packets unless held (see :meth:`held`)."""
        if self.hold is not None and self.held():
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._read_packets(max_packets)

    def _read_packets(self, max_packets: int) -> MQTTErrorCode:
        """Read packets while the buffer holds bytes (paho reads one per ``select()``)."""
        sock = self._sock
        if not isinstance(sock, BufferedSocket):
            return super().loop_read(max_packets)
        for _ in range(MAX_PACKETS_PER_READ):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN or not sock.pending():
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return MQTTErrorCode.MQTT_ERR_SUCCESS  # pending() > 0: paho's loop does not wait


_EMPTY_PUBLISH_PROPERTIES = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]


def empty_publish_properties() -> Properties:
    """A new ``Properties(PUBLISH)`` without properties, without rebuilding its tables."""
    props: Properties = Properties.__new__(Properties)
    props.__dict__.update(_EMPTY_PUBLISH_PROPERTIES.__dict__)  # read-only lookup tables
    return props


class FastClient(BufferedClient):
    """:class:`BufferedClient` with the light PUBLISH decode (see the module docstring)."""

    on_raw_publish: RawPublishSink | None = None

    def _read_packets(self, max_packets: int) -> MQTTErrorCode:
        """Whole PUBLISH packets from the buffer in bulk, the rest through paho."""
        sock = self._sock
        if (self.on_raw_publish is None or not isinstance(sock, BufferedSocket)
                or self.on_log is not None or self._logger is not None):
            return super()._read_packets(max_packets)
        handled = 0
        hold = self.hold
        while handled < MAX_PACKETS_PER_READ:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if self._in_packet["command"] == 0 and sock.fill():
                taken = self.take_publishes(sock)
                if taken:
                    handled += taken
                    if hold is not None and hold():  # full: at most one buffer over
                        return MQTTErrorCode.MQTT_ERR_SUCCESS
                    continue
            rc = self._packet_read()
            handled += 1
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN or not sock.pending():
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def take_publishes(self, sock: BufferedSocket) -> int:
        """Hand every whole PUBLISH at the head of ``sock``'s buffer to ``on_raw_publish``;
        stops at the first packet paho must see. Returns how many were taken."""
        sink = self.on_raw_publish
        assert sink is not None
        buf, pos = sock._buf, sock._pos
        end = len(buf)
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        auto_ack = not self._manual_ack
        taken = 0
        while pos < end:
            header = buf[pos]
            qos = (header & 0x06) >> 1
            if header & 0xF0 != 0x30 or qos == 2:
                break
            p, length, shift = pos + 1, 0, 0
            while p < end and shift < 28:
                byte = buf[p]
                p += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            else:
                break  # cut by the end of the buffer, or malformed: paho's read
            stop = p + length
            if stop > end:
                break
            slen = (buf[p] << 8 | buf[p + 1]) if length >= 2 else -1
            q = p + 2 + slen
            mid = 0
            if qos:
                mid = buf[q] << 8 | buf[q + 1] if q + 2 <= stop else -1
                q += 2
            if slen < (0 if v5 else 1) or q + v5 > stop or mid < 0 or (v5 and buf[q]):
                break  # properties, an alias, a malformed packet: paho decodes it
            sink(buf[p + 2:p + 2 + slen], buf[q + v5:stop], mid, qos)
            if qos == 1 and auto_ack:
                self._send_puback(mid)
            pos = stop
            taken += 1
        if taken:
            if pos >= end:
                sock._buf, sock._pos = b"", 0
            else:
                sock._pos = pos
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
        return taken

    def ack_batch(self, mids: Sequence[int]) -> None:
        """Queue the PUBACKs of QoS 1 messages (manual acknowledgement) as one packet.

        paho's ``ack`` queues one packet and wakes its loop with one system call per
        message; the broker reads the concatenated PUBACKs exactly as if sent apart.
        """
        if not mids or not self._manual_ack:
            return
        pack = _PUBACK.pack
        self._packet_queue(mqtt.PUBACK, b"".join([pack(0x40, 2, m) for m in mids]), 0, 0)

    def _handle_publish(self) -> MQTTErrorCode:
        header: int = self._in_packet["command"]
        packet: bytearray = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        size = len(packet)
        slen = int.from_bytes(packet[:2], "big")
        pos = 2 + slen
        if qos:
            pos += 2
        if (qos == 2 or size < pos + v5 or (not v5 and slen == 0) or (v5 and packet[pos])
                or self.on_log is not None or self._logger is not None):
            return super()._handle_publish()
        mid = int.from_bytes(packet[pos - 2:pos], "big") if qos else 0
        sink = self.on_raw_publish
        if sink is not None:
            sink(bytes(packet[2:2 + slen]), bytes(packet[pos + v5:]), mid, qos)
            if qos == 1 and not self._manual_ack:
                return self._send_puback(mid)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        message = mqtt.MQTTMessage(mid=mid, topic=bytes(packet[2:2 + slen]))
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        if v5:
            message.properties = empty_publish_properties()
            pos += 1
        message.payload = bytes(packet[pos:])
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(message.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS
