"""Device-side events and status changes → findings, with the device type's severities.

A gas alarm decides its alarm itself: its ``alarm`` event is a finding like a
rule's. The rule id is ``event:<type>`` (``status:offline`` for offline), so the
alert fingerprint is device + event type; the clear event of a pair
(``alarm_clear``, ``fault_clear``, ``valve_open``, ``power_restore``) resolves it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from devices.catalogue import Catalogue
from devices.events import DeviceEvent, EventType
from devices.registry import DeviceLookup
from devices.status import Change, LinkStatus, StatusChange
from rules.model import Finding, FindingState, Severity

CLEARS: Final = {
    EventType.ALARM_CLEAR: EventType.ALARM,
    EventType.FAULT_CLEAR: EventType.FAULT,
    EventType.VALVE_OPEN: EventType.VALVE_CLOSED,
    EventType.POWER_RESTORE: EventType.POWER_LOSS,
}
"""Clear events and the event whose alert they resolve."""

OFFLINE_RULE: Final = "status:offline"


def event_rule_id(event_type: EventType) -> str:
    """The rule id of an event type's findings (clear events map to what they clear)."""
    return f"event:{CLEARS.get(event_type, event_type).value}"


def event_severity(event: DeviceEvent, registry: DeviceLookup, catalogue: Catalogue) -> Severity:
    """Severity of ``event`` from its device type's mapping (level-aware)."""
    device = registry.get(event.device_id)
    dtype = catalogue.types.get(device.type) if device else None
    kind = CLEARS.get(event.type, event.type).value
    if dtype is not None:
        spec = dtype.event_spec(kind)
    else:
        from devices.catalogue import DEFAULT_EVENTS  # noqa: PLC0415

        spec = DEFAULT_EVENTS.get(kind)
    return Severity(spec.severity_for(event.level)) if spec else Severity.INFO


def event_findings(events: Iterable[DeviceEvent], registry: DeviceLookup,
                   catalogue: Catalogue) -> list[tuple[DeviceEvent, Finding]]:
    """One finding per event: firing for an event, resolved for its clear event."""
    out: list[tuple[DeviceEvent, Finding]] = []
    for e in events:
        state = FindingState.RESOLVED if e.type in CLEARS else FindingState.FIRING
        value = e.value if e.value is not None else float(e.level or 0)
        out.append((e, Finding(
            rule_id=event_rule_id(e.type), device_id=e.device_id,
            metric=e.metric or CLEARS.get(e.type, e.type).value, state=state,
            severity=event_severity(e, registry, catalogue), ts_ns=e.ts_ns, value=value,
        )))
    return out


def status_findings(changes: Iterable[StatusChange], registry: DeviceLookup,
                    catalogue: Catalogue) -> list[Finding]:
    """Offline fires ``status:offline`` (the type's offline severity); back online resolves it."""
    out: list[Finding] = []
    for c in changes:
        if c.change is not Change.OFFLINE and not (
                c.change is Change.ONLINE and c.previous is LinkStatus.OFFLINE):
            continue  # a first "online" resolves nothing
        device = registry.get(c.device_id)
        dtype = catalogue.types.get(device.type) if device else None
        severity = Severity(dtype.health.offline_severity) if dtype else Severity.MINOR
        state = FindingState.FIRING if c.change is Change.OFFLINE else FindingState.RESOLVED
        out.append(Finding(rule_id=OFFLINE_RULE, device_id=c.device_id, metric="link",
                           state=state, severity=severity, ts_ns=c.ts_ns,
                           value=0.0 if state is FindingState.FIRING else 1.0))
    return out
