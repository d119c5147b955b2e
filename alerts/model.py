"""Alert, case, silence and delivery types, and the configuration of the alerts pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rules.model import Severity


class AlertState(StrEnum):
    """Lifecycle of an alert (one per fingerprint)."""

    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class CaseState(StrEnum):
    """Case states of docs/design.md (数字城管 workflow)."""

    REPORTED = "reported"        # 上报
    REGISTERED = "registered"    # 立案
    DISPATCHED = "dispatched"    # 派遣
    IN_PROGRESS = "in_progress"  # 处置中
    HANDLED = "handled"          # 处置完成
    VERIFIED = "verified"        # 核查
    CLOSED = "closed"            # 结案
    CANCELLED = "cancelled"      # 不予立案 / false alarm
    RETURNED = "returned"        # 退回
    REWORK = "rework"            # 返工


OPEN_CASE_STATES = frozenset(CaseState) - {CaseState.CLOSED, CaseState.CANCELLED}
# Alerts the service raises about itself (rule ids ``service:<what>``): they are stored,
# shown and notified like any alert, but never open a case: no field unit can handle them.
SERVICE_RULE_PREFIX = "service:"


class DeliveryStatus(StrEnum):
    """State of one outbox row."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class SilenceKind(StrEnum):
    """A silence mutes notifications; a maintenance window also inhibits process alarms."""

    SILENCE = "silence"
    MAINTENANCE = "maintenance"


MATCHER_KEYS = ("device", "type", "grid", "rule")


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
class Case:
    """A stored case."""

    id: int
    state: CaseState
    severity: Severity
    title: str
    grid: str
    district: str
    device_type: str
    device_id: str
    unit: str
    group_key: str
    external_id: str
    created_ns: int
    updated_ns: int
    last_alert_ns: int
    registered_ns: int | None
    dispatched_ns: int | None
    accepted_ns: int | None
    handled_ns: int | None
    verified_ns: int | None
    closed_ns: int | None
    cancelled_ns: int | None
    register_due_ns: int | None
    dispatch_due_ns: int | None
    handle_due_ns: int | None
    verify_due_ns: int | None
    overdue: bool
    escalated: str
    handled_on_time: bool | None
    rework_count: int
    return_count: int

    def doc(self) -> dict[str, Any]:
        """The ``case`` object of webhook bodies and the API."""
        return {
            "id": self.id, "state": self.state.value, "severity": self.severity.value,
            "title": self.title, "grid": self.grid or None, "district": self.district or None,
            "device_type": self.device_type or None, "device": self.device_id or None,
            "unit": self.unit or None, "external_id": self.external_id or None,
            "created": iso(self.created_ns), "updated": iso(self.updated_ns),
            "registered": iso(self.registered_ns), "dispatched": iso(self.dispatched_ns),
            "accepted": iso(self.accepted_ns), "handled": iso(self.handled_ns),
            "verified": iso(self.verified_ns), "closed": iso(self.closed_ns),
            "cancelled": iso(self.cancelled_ns),
            "deadlines": {"register": iso(self.register_due_ns),
                          "dispatch": iso(self.dispatch_due_ns),
                          "handle": iso(self.handle_due_ns),
                          "verify": iso(self.verify_due_ns)},
            "overdue": self.overdue,
            "escalated": [s for s in self.escalated.split(",") if s],
            "handled_on_time": self.handled_on_time,
            "rework_count": self.rework_count, "return_count": self.return_count,
        }


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of a case's audit history."""

    at_ns: int
    actor: str
    action: str
    from_state: str
    to_state: str
    note: str


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes alerts whose labels match every matcher (glob patterns) between start and end."""

    id: int
    kind: SilenceKind
    matchers: dict[str, str]
    starts_ns: int
    ends_ns: int
    created_by: str
    comment: str
    created_ns: int

    def active(self, now_ns: int) -> bool:
        """True between start (inclusive) and end (exclusive)."""
        return self.starts_ns <= now_ns < self.ends_ns


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row: an event for one endpoint."""

    id: int
    delivery_id: str
    event_id: str
    event: str
    payload: dict[str, Any]
    status: DeliveryStatus
    attempts: int
    created_ns: int
    next_attempt_ns: int
    last_error: str
    last_status: int | None
    delivered_ns: int | None
    delivered_via: str
    case_id: int | None


@dataclass(frozen=True, slots=True)
class StageDeadlines:
    """Per-stage deadlines (ns) for one severity; 0 means no deadline."""

    register_ns: int = 0
    dispatch_ns: int = 0
    handle_ns: int = 0
    verify_ns: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    """A routing table row: grid and device type (``*`` matches any) → unit."""

    grid: str
    device_type: str
    unit: str


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Lifecycle and noise control settings (durations in ns)."""

    pending_ns: int = 0
    reopen_ns: int = 300 * 10**9
    resolve_delay_ns: int = 60 * 10**9
    flap_window_ns: int = 1800 * 10**9
    flap_threshold: int = 6


@dataclass(frozen=True, slots=True)
class CaseConfig:
    """Case workflow settings (durations in ns)."""

    auto_register: Severity = Severity.MAJOR
    min_severity: Severity = Severity.WARNING
    group_window_ns: int = 600 * 10**9
    default_unit: str = "城市运行管理中心"
    routes: tuple[Route, ...] = ()
    deadlines: dict[str, StageDeadlines] = field(default_factory=dict)
    verify_after_ns: int = 300 * 10**9
    auto_verify: bool = True
    auto_close: bool = True
    redispatch_on_return: bool = True

    def deadlines_for(self, severity: Severity, device_type: str) -> StageDeadlines:
        """Type-specific deadlines (``"gas_alarm/critical"``), else by severity, else none."""
        return (self.deadlines.get(f"{device_type}/{severity.value}")
                or self.deadlines.get(severity.value) or StageDeadlines())

    def route(self, grid: str, device_type: str, device_unit: str) -> str:
        """Routing table first match, else the device's own unit, else the default unit."""
        for r in self.routes:
            if r.grid in ("*", grid) and r.device_type in ("*", device_type):
                return r.unit
        return device_unit or self.default_unit


def iso(ns: int | None) -> str | None:
    """RFC 3339 UTC with milliseconds, or None."""
    if ns is None:
        return None
    from datetime import UTC, datetime  # noqa: PLC0415 - keep module import light

    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
