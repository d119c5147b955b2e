"""Inhibition: process alarms of an offline, faulty or maintained device, and those below
a critical one on the same device, are held."""

from __future__ import annotations

import sqlalchemy as sa

from alerts.lifecycle.model import Alert, AlertState
from alerts.lifecycle.stages.stage import NoiseContext
from alerts.lifecycle.store import alerts
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


def is_process_alarm(rule_id: str, metric: str = "") -> bool:
    """True for alarms about the process (gas, pressure, …), not about the device
    (its events, its link status, its battery or signal)."""
    return (rule_id not in DEVICE_HEALTH_RULES and not rule_id.startswith("status:")
            and metric not in HEALTH_METRICS)



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
