"""Typed device events and status updates, as decoded from the ``event`` and ``status`` topics."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EventType(StrEnum):
    """Events a device decides itself (docs/design.md)."""

    ALARM = "alarm"
    ALARM_CLEAR = "alarm_clear"
    FAULT = "fault"
    FAULT_CLEAR = "fault_clear"
    TAMPER = "tamper"
    LOW_BATTERY = "low_battery"
    VALVE_CLOSED = "valve_closed"
    VALVE_OPEN = "valve_open"
    POWER_LOSS = "power_loss"
    POWER_RESTORE = "power_restore"


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """One event from a device's ``event`` topic."""

    device_id: str
    ts_ns: int
    type: EventType
    level: int | None = None
    metric: str | None = None
    value: float | None = None
    ts_missing: bool = False


class LinkState(StrEnum):
    """What a device says about its own connection."""

    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One message from a device's (retained) ``status`` topic."""

    device_id: str
    ts_ns: int  # receive time: status messages carry no reliable clock
    state: LinkState
    firmware: str | None = None
    rssi: float | None = None
