"""Publish simulated telemetry over MQTT at a steady rate (paho, QoS 1 by default)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from devices.model import Device
from devices.topics import TopicKind, TopicScheme
from simulators.signals import DeviceSignal

log = logging.getLogger(__name__)

MALFORMED_PAYLOADS = (b"{not json", b'{"values": "lots"}', b"\xff\xfe\x00", b"[]")


@dataclass(frozen=True, slots=True)
class SimulationPlan:
    """What to publish."""

    devices: list[Device]
    rate: float  # messages per second over the whole fleet
    duration_s: float | None  # None: until stopped
    drift_device: str | None = None
    drift_after_s: float = 2.0
    drift_rate_per_s: float = 10.0  # %LEL per second
    malformed: int = 0  # malformed payloads spread over the run
    qos: int = 1
    seed: int = 1


@dataclass(slots=True)
class SimulationResult:
    """What was published and acknowledged by the broker."""

    messages: int = 0
    values: int = 0
    malformed: int = 0
    per_type: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


class Publisher:
    """Publishes a :class:`SimulationPlan` through one MQTT connection."""

    def __init__(self, host: str, port: int, scheme: TopicScheme, plan: SimulationPlan,
                 client_id: str = "lifeline-sim") -> None:
        self.scheme = scheme
        self.plan = plan
        self.result = SimulationResult()
        self.stop_event = threading.Event()
        # called every few milliseconds with the result so far and the seconds elapsed
        self.progress: Callable[[SimulationResult, float], None] | None = None
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=MQTTProtocolVersion.MQTTv311)
        self._client.max_inflight_messages_set(1000)
        self._host, self._port = host, port

    def run(self) -> SimulationResult:
        """Publish until the plan's duration passes or :attr:`stop_event` is set."""
        plan = self.plan
        rng = random.Random(plan.seed)
        signals = [
            DeviceSignal(d, random.Random(plan.seed * 7919 + i),
                         drift_start_s=plan.drift_after_s if d.id == plan.drift_device else None,
                         drift_rate_per_s=plan.drift_rate_per_s)
            for i, d in enumerate(plan.devices)
        ]
        self._client.connect(self._host, self._port, 30)
        self._client.loop_start()
        infos: list[mqtt.MQTTMessageInfo] = []
        last_ts: dict[str, int] = {}
        seq = 0
        started = time.monotonic()
        malformed_at = sorted(rng.random() for _ in range(plan.malformed))
        sent = 0
        try:
            while not self.stop_event.is_set():
                elapsed = time.monotonic() - started
                if plan.duration_s is not None and elapsed >= plan.duration_s:
                    break
                due = int(elapsed * plan.rate) + 1
                while sent < due:
                    sig = signals[sent % len(signals)]
                    device = sig.device
                    now_ms = max(int(time.time() * 1000), last_ts.get(device.id, 0) + 1)
                    last_ts[device.id] = now_ms
                    seq += 1
                    values = sig.values(elapsed)
                    payload = orjson.dumps({"ts": now_ms, "seq": seq, "values": values})
                    topic = self.scheme.topic(device.id, TopicKind.TELEMETRY)
                    infos.append(self._client.publish(topic, payload, qos=plan.qos))
                    self.result.values += len(values)
                    self.result.per_type[device.type] = (
                        self.result.per_type.get(device.type, 0) + len(values))
                    sent += 1
                    frac = elapsed / plan.duration_s if plan.duration_s else 0.0
                    while malformed_at and malformed_at[0] <= frac:
                        malformed_at.pop(0)
                        bad = MALFORMED_PAYLOADS[self.result.malformed % len(MALFORMED_PAYLOADS)]
                        infos.append(self._client.publish(topic, bad, qos=plan.qos))
                        self.result.malformed += 1
                self.result.messages = sent
                if self.progress is not None:
                    self.progress(self.result, elapsed)
                if len(infos) > 10_000:
                    infos = [i for i in infos if not i.is_published()]
                time.sleep(0.005)
            for info in infos:
                info.wait_for_publish(timeout=30)
        finally:
            self.result.elapsed_s = time.monotonic() - started
            self._client.disconnect()
            self._client.loop_stop()
        unacked = sum(1 for i in infos if not i.is_published())
        if unacked:
            log.warning("%d messages were not acknowledged by the broker", unacked)
        self.result.messages = sent
        return self.result
