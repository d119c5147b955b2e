"""Noise control: small stages behind one protocol, run in order on alerts that want a
notification (in the style of Alertmanager's notify pipeline).

Each stage gets the candidates and returns those that pass; it records why it held the
others in ``ctx.held``. A held alert stays a candidate and is looked at again on the next
tick, so a silence that ends or an inhibition that lifts lets it through then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alerts.model import Alert, AlertConfig, AlertState, Silence
from alerts.schema import alerts
from rules.model import Severity

# Device-side events about the device itself; everything else is a process alarm.
DEVICE_HEALTH_RULES = frozenset({
    "event:fault", "event:tamper", "event:low_battery", "event:power_loss",
    "event:valve_closed", "event:valve_open",
})
# Firing alerts of these rules mean the device's measurements cannot be trusted.
SENSOR_FAULT_RULES = frozenset({"event:fault", "event:power_loss"})
# A firing alert of this rule means the device is offline.
OFFLINE_RULE = "status:offline"
# Metrics about the device itself, not the process it watches.
HEALTH_METRICS = frozenset({"battery", "rssi", "link"})


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


def is_process_alarm(rule_id: str, metric: str = "") -> bool:
    """True for alarms about the process (gas, pressure, …), not about the device
    (its events, its link status, its battery or signal)."""
    return (rule_id not in DEVICE_HEALTH_RULES and not rule_id.startswith("status:")
            and metric not in HEALTH_METRICS)


def matches(silence: Silence, alert: Alert) -> bool:
    """Every matcher (glob) matches the alert's labels."""
    labels = {"device": alert.device_id, "type": alert.device_type, "grid": alert.grid,
              "rule": alert.rule_id}
    return all(fnmatchcase(labels.get(k, ""), pattern) for k, pattern in silence.matchers.items())


class DedupStage:
    """Drops alerts whose state was already notified; waits ``resolve_delay`` before a
    resolved notification (a re-fire in between is no news); a resolved alert that was
    never notified is consumed silently."""

    name = "dedup"

    def apply(self, ctx: NoiseContext, candidates: list[Alert]) -> list[Alert]:
        """See the class docstring."""
        out = []
        for a in candidates:
            if a.state is AlertState.PENDING:
                continue
            if a.state is AlertState.RESOLVED:
                if a.notified_state in ("", AlertState.RESOLVED.value):
                    if a.notified_state == "":
                        ctx.consumed.add(a.id)
                    continue
                if ctx.now_ns - (a.resolved_ns or a.changed_ns) < ctx.config.resolve_delay_ns:
                    ctx.held[a.id] = "resolve_delay"
                    continue
            elif (a.notified_state == AlertState.FIRING.value
                  and a.notified_severity == a.severity.value):
                continue
            out.append(a)
        return out


class FlapStage:
    """A flapping alert gets at most one notification until it calms down."""

    name = "flap"

    def apply(self, ctx: NoiseContext, candidates: list[Alert]) -> list[Alert]:
        """See the class docstring."""
        out = []
        for a in candidates:
            if a.flapping and a.notified_state != "":
                ctx.held[a.id] = "flapping"
                continue
            out.append(a)
        return out


class SilenceStage:
    """Holds firing alerts matched by an active silence or maintenance window."""

    name = "silence"

    def apply(self, ctx: NoiseContext, candidates: list[Alert]) -> list[Alert]:
        """See the class docstring."""
        out = []
        for a in candidates:
            hit = next((s for s in ctx.silences if matches(s, a)), None)
            if a.state is AlertState.FIRING and hit is not None:
                ctx.held[a.id] = f"{hit.kind.value}:{hit.id}"
                continue
            out.append(a)
        return out


class InhibitStage:
    """Holds process alarms of a device that is offline (tracker or its own
    ``status:offline`` alert), in maintenance or faulty (tracker or its own fault / power
    loss alert), and process alarms below critical on a device with a critical one firing."""

    name = "inhibit"

    def apply(self, ctx: NoiseContext, candidates: list[Alert]) -> list[Alert]:
        """See the class docstring."""
        out = []
        for a in candidates:
            reason = self._reason(ctx, a) if a.state is AlertState.FIRING else None
            if reason:
                ctx.held[a.id] = reason
                continue
            out.append(a)
        return out

    @staticmethod
    def _reason(ctx: NoiseContext, a: Alert) -> str | None:
        dev = a.device_id
        process = is_process_alarm(a.rule_id, a.metric)
        if process:
            if ctx.devices.is_offline(dev):
                return "inhibited:offline"
            if ctx.devices.in_maintenance(dev):
                return "inhibited:maintenance"
            if ctx.devices.has_sensor_fault(dev):
                return "inhibited:sensor_fault"
        others = ctx.conn.execute(
            sa.select(alerts.c.rule_id, alerts.c.severity, alerts.c.metric).where(
                alerts.c.device_id == dev, alerts.c.state == AlertState.FIRING.value,
                alerts.c.id != a.id)).all()
        if process and any(r == OFFLINE_RULE for r, _, _ in others):
            return "inhibited:offline"
        if process and any(r in SENSOR_FAULT_RULES for r, _, _ in others):
            return "inhibited:sensor_fault"
        if process and a.severity is not Severity.CRITICAL and any(
                s == Severity.CRITICAL.value and is_process_alarm(r, m) for r, s, m in others):
            return "inhibited:critical"
        return None


def default_stages() -> list[Stage]:
    """De-duplication, flap detection, silences/maintenance, inhibition — in that order."""
    return [DedupStage(), FlapStage(), SilenceStage(), InhibitStage()]
