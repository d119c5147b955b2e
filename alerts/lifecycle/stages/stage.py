"""Noise control: small stages behind one protocol, run in order on alerts that want a
notification (in the style of Alertmanager's notify pipeline).

Each stage gets the candidates and returns those that pass; it records why it held the
others in ``ctx.held``. A held alert stays a candidate and is looked at again on the next
tick, so a silence that ends or an inhibition that lifts lets it through then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.engine import Connection

from alerts.lifecycle.model import Alert, AlertConfig
from alerts.silences.model import Silence


class DeviceStateView(Protocol):
    """What inhibition needs to know about a device (the devices tracker provides it)."""

    def is_offline(self, device_id: str) -> bool:
        """True while the device is offline."""
        ...

    def in_maintenance(self, device_id: str) -> bool:
        """True while the device is in a maintenance window."""
        ...

    def has_sensor_fault(self, device_id: str) -> bool:
        """True while the device reports a sensor fault."""
        ...


class NoDeviceState:
    """A view that knows nothing: every device online, healthy, not in maintenance."""

    def is_offline(self, device_id: str) -> bool:
        """Never offline."""
        return False

    def in_maintenance(self, device_id: str) -> bool:
        """Never in maintenance."""
        return False

    def has_sensor_fault(self, device_id: str) -> bool:
        """Never faulty."""
        return False


@dataclass(slots=True)
class NoiseContext:
    """What the stages may look at, and what they decided."""

    conn: Connection
    now_ns: int
    config: AlertConfig
    silences: list[Silence]
    devices: DeviceStateView
    held: dict[int, str] = field(default_factory=dict)
    consumed: set[int] = field(default_factory=set)


class Stage(Protocol):
    """One noise-control stage."""

    name: str

    def apply(self, ctx: NoiseContext, candidates: list[Alert]) -> list[Alert]:
        """The candidates that pass; record the held ones in ``ctx.held``."""
        ...
