"""The alert: its states, its stored form and the lifecycle settings."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from alerts.timefmt import iso
from rules.model import Severity


class AlertState(StrEnum):
    """Lifecycle of an alert (one per fingerprint)."""

    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


# Alerts the service raises about itself (rule ids ``service:<what>``): they are stored,
# shown and notified like any alert, but never open a case: no field unit can handle them.
SERVICE_RULE_PREFIX = "service:"



@dataclass(frozen=True, slots=True)
class Alert:
    """A stored alert."""

    id: int
    fingerprint: str
    device_id: str
    rule_id: str
    metric: str
    state: AlertState
    severity: Severity
    value: float
    device_type: str
    grid: str
    district: str
    unit: str
    first_seen_ns: int
    changed_ns: int
    fired_ns: int | None
    resolved_ns: int | None
    flapping: bool
    suppressed: str
    notified_state: str
    notified_severity: str
    acked_by: str
    acked_ns: int | None
    ack_note: str
    case_id: int | None
    changes: tuple[int, ...] = ()

    def doc(self) -> dict[str, Any]:
        """The ``alert`` object of webhook bodies and the API."""
        return {
            "id": self.id, "fingerprint": self.fingerprint, "state": self.state.value,
            "rule": self.rule_id, "severity": self.severity.value, "device": self.device_id,
            "device_type": self.device_type or None, "grid": self.grid or None,
            "district": self.district or None, "unit": self.unit or None,
            "metric": self.metric, "value": self.value, "flapping": self.flapping,
            "suppressed": self.suppressed or None, "case_id": self.case_id,
            "first_seen": iso(self.first_seen_ns), "changed": iso(self.changed_ns),
            "fired": iso(self.fired_ns), "resolved": iso(self.resolved_ns),
            "acked_by": self.acked_by or None, "acked": iso(self.acked_ns),
            "ack_note": self.ack_note or None,
            "at": iso(self.changed_ns),
        }


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Lifecycle and noise control settings (durations in ns)."""

    pending_ns: int = 0
    reopen_ns: int = 300 * 10**9
    resolve_delay_ns: int = 60 * 10**9
    flap_window_ns: int = 1800 * 10**9
    flap_threshold: int = 6
