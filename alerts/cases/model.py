"""The case: its states, its stored form and audit lines, and the workflow settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from alerts.timefmt import iso
from rules.model import Severity


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
