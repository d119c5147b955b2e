"""Raw MQTT messages and the buffer between the network thread and the decoder.

Kept free of numpy: the MQTT network process imports only this, paho and the
subscriber, so it starts quickly.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import NamedTuple


class RawMessage(NamedTuple):
    """One MQTT message as the network thread saw it (a tuple: cheap to build there)."""

    topic: str
    payload: bytes
    received_at_ns: int
    mid: int = 0  # MQTT packet id (QoS 1/2), for the manual acknowledgement
    qos: int = 0
    session: int = 0  # connection it arrived on: an ack is only valid on that one


class RawBuffer:
    """Hand-off from the MQTT network thread to the decoder.

    The network thread only appends; the pipeline drains in batches. With a
    ``limit`` the buffer is :meth:`full` at that many messages: the network thread
    then leaves the rest in the socket (flow control, see
    :class:`ingest.mqttsocket.BufferedClient`); ``on_drain`` is called after every
    drain (the network process's credit, :class:`ingest.netproc.ProcessSubscriber`).
    """

    def __init__(self, wake_at: int = 5000, limit: int = 0) -> None:
        self._items: deque[RawMessage] = deque()
        self._wake_at = wake_at
        self._ready = threading.Event()
        self.limit = limit  # 0: no limit
        self.peak = 0  # most messages held at once
        self.on_drain: Callable[[], None] | None = None

    def full(self) -> bool:
        """At the limit: the network thread should stop reading for now."""
        return 0 < self.limit <= len(self._items)

    def append(self, message: RawMessage) -> None:
        """Called from the network thread: O(1), no decoding."""
        self._items.append(message)
        n = len(self._items)
        if n > self.peak:  # noqa: PLR1730 - per message: a compare is cheaper than max()
            self.peak = n
        if n >= self._wake_at and not self._ready.is_set():
            self._ready.set()

    def put(self, topic: str, payload: bytes, received_at_ns: int, mid: int, qos: int,
            session: int) -> None:
        """Append one message from its parts (the network thread's call)."""
        self.append(RawMessage(topic, payload, received_at_ns, mid, qos, session))

    def extend(self, messages: list[RawMessage]) -> None:
        """Append a whole batch (handed over by the network process)."""
        self._items.extend(messages)
        n = len(self._items)
        self.peak = max(self.peak, n)
        if n >= self._wake_at and not self._ready.is_set():
            self._ready.set()

    def wake(self) -> None:
        """Wake a waiting :meth:`wait` now (a small batch that should not wait)."""
        self._ready.set()

    def wait(self, timeout: float) -> None:
        """Block until a batch is ready or ``timeout`` passes."""
        self._ready.wait(timeout)
        self._ready.clear()

    def drain(self, limit: int) -> list[RawMessage]:
        """Take up to ``limit`` messages, oldest first."""
        items = self._items
        n = min(limit, len(items))
        taken = [items.popleft() for _ in range(n)]
        if self.on_drain is not None:
            self.on_drain()
        return taken

    def __len__(self) -> int:
        return len(self._items)
