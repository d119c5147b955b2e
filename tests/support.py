"""Small helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], object], timeout: float = 20, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; its final verdict."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def clean_env() -> dict[str, str]:
    """This process's environment without any ``LIFELINE_*`` setting (for CLI subprocesses)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}


class ReadingClock:
    """A service clock for alert pipelines driven by findings in tests: it is never behind the
    newest finding processed, as the service's own clock is when a reading arrives."""

    def __init__(self, start_ns: int) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def follow(self, pipeline: Any) -> None:
        """Advance to each batch's newest finding before ``pipeline.process`` runs it."""
        process = pipeline.process

        def following(findings: Any) -> Any:
            self.now_ns = max([self.now_ns, *(f.ts_ns for f in findings)])
            return process(findings)

        pipeline.process = following


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length encoding of a packet's remaining length."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_numbered(port: int, topics: list[str], qos: int, tag: str = "m") -> None:
    """Publish one message per topic with payload ``<tag><index>`` and wait until the
    broker has every one."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(t, f"{tag}{i}".encode(), qos=qos) for i, t in enumerate(topics)]
    for info in infos:
        info.wait_for_publish(20)
    pub.disconnect()
    pub.loop_stop()
