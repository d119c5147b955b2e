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
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

READ_SIZE = 65536
MAX_PACKETS_PER_READ = 2000  # then paho writes (acks, pings) before reading on


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

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if isinstance(sock, (socket.socket, ssl.SSLSocket)):  # not websockets
            return BufferedSocket(sock)
        return sock

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
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
        message = mqtt.MQTTMessage(mid=int.from_bytes(packet[pos - 2:pos], "big") if qos else 0,
                                   topic=bytes(packet[2:2 + slen]))
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
