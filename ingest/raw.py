"""Raw MQTT messages and the buffer between the network thread and the decoder.

Kept free of numpy: the MQTT network process imports only this, paho and the
subscriber, so it starts quickly.
"""

from __future__ import annotations

import threading
from collections import deque
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

    The network thread only appends; the pipeline drains in batches.
    """

    def __init__(self, wake_at: int = 5000) -> None:
        self._items: deque[RawMessage] = deque()
        self._wake_at = wake_at
        self._ready = threading.Event()

    def append(self, message: RawMessage) -> None:
        """Called from the network thread: O(1), no decoding."""
        self._items.append(message)
        if len(self._items) >= self._wake_at and not self._ready.is_set():
            self._ready.set()

    def put(self, topic: str, payload: bytes, received_at_ns: int, mid: int, qos: int,
            session: int) -> None:
        """Append one message from its parts (the network thread's call)."""
        self.append(RawMessage(topic, payload, received_at_ns, mid, qos, session))

    def extend(self, messages: list[RawMessage]) -> None:
        """Append a whole batch (handed over by the network process)."""
        self._items.extend(messages)
        if len(self._items) >= self._wake_at and not self._ready.is_set():
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
        return [items.popleft() for _ in range(n)]

    def __len__(self) -> int:
        return len(self._items)
