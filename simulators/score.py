"""Score detections and cases against a scenario's ground truth.

Pure data in, a report out: no service, database or broker is needed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from simulators.scenario import Truth

# Targets of the shipped rules (issue: simulators and scenarios).
DETECT_WITHIN_S = {"gas_leak": 60.0, "gas_rupture": 60.0, "main_burst": 120.0,
                   "background_leak": 3 * 86_400.0}
MAX_FALSE_CASES_PER_1000_DEVICE_DAYS = 1.0
# How long after an incident ends a finding or case still counts as about it.
GRACE_S = 1800.0


@dataclass(frozen=True, slots=True)
class Detection:
    """A firing finding of a process rule (or a device's own alarm)."""

    device_id: str
    rule_id: str
    ts_s: float
    grid: str
    dma: str
    process: bool  # False for sensor-health findings (stale, flatline, battery, ...)


@dataclass(frozen=True, slots=True)
class CaseRecord:
    """A case the service opened, with the devices of its alerts."""

    id: int
    created_s: float
    devices: tuple[str, ...]
    grid: str
    dma: str
    process: bool  # opened for a process alarm (not a sensor-health one)


@dataclass(frozen=True, slots=True)
class IncidentScore:
    """How one incident was handled."""

    truth: Truth
    detected: bool
    time_to_detect_s: float | None
    time_to_case_s: float | None
    cases: int  # process cases
    target_s: float | None
    health_cases: int = 0  # maintenance cases (device offline, stale, battery ...)

    @property
    def met(self) -> bool:
        """Did this incident meet its target?"""
        if self.truth.category != "process":
            return self.cases == 0
        if not self.truth.expect_case:
            return True
        if not self.detected or self.time_to_detect_s is None:
            return False
        in_time = self.target_s is None or self.time_to_detect_s <= self.target_s
        return in_time and self.cases == 1

    def doc(self) -> dict[str, Any]:
        """JSON-ready."""
        t = self.truth
        return {
            "id": t.id, "kind": t.kind, "category": t.category, "devices": len(t.devices),
            "expect_case": t.expect_case, "detected": self.detected,
            "time_to_detect_s": _round(self.time_to_detect_s),
            "time_to_case_s": _round(self.time_to_case_s), "cases": self.cases,
            "health_cases": self.health_cases,
            "target_s": self.target_s, "met": self.met,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _touches(truth: Truth, device_id: str, grid: str, dma: str) -> bool:
    if device_id in truth.devices:
        return True
    if truth.kind in ("main_burst", "background_leak"):
        return dma == truth.dma
    return False


def _in_window(truth: Truth, ts_s: float, lead_s: float = 0.0) -> bool:
    return truth.start_s - lead_s <= ts_s <= truth.end_s + GRACE_S


def score(
    truth: Sequence[Truth],
    detections: Sequence[Detection],
    cases: Sequence[CaseRecord],
    *,
    device_count: int,
    duration_s: float,
    scenario: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The evaluation report of one scenario run."""
    incidents: list[IncidentScore] = []
    matched_cases: set[int] = set()
    for t in truth:
        hits = [d for d in detections if d.process and _touches(t, d.device_id, d.grid, d.dma)
                and _in_window(t, d.ts_s)]
        own = [c for c in cases if any(_touches(t, dev, c.grid, c.dma) for dev in c.devices)
               and _in_window(t, c.created_s)]
        if t.category == "process":
            matched_cases.update(c.id for c in own)
        else:  # a maintenance case (offline, stale, battery) for a real device fault
            matched_cases.update(c.id for c in own if not c.process)
        first = min((d.ts_s for d in hits), default=None)
        first_case = min((c.created_s for c in own), default=None)
        incidents.append(IncidentScore(
            truth=t, detected=first is not None,
            time_to_detect_s=None if first is None else max(0.0, first - t.reference_s),
            time_to_case_s=None if first_case is None else max(0.0, first_case - t.reference_s),
            cases=len([c for c in own if c.process]),
            target_s=DETECT_WITHIN_S.get(t.kind),
            health_cases=len([c for c in own if not c.process]),
        ))
    device_days = device_count * duration_s / 86_400
    false_cases = [c for c in cases if c.id not in matched_cases]
    sensor_as_process = sum(s.cases for s in incidents if s.truth.category != "process")
    process_detections = [d for d in detections if d.process]
    false_detections = [d for d in process_detections if not any(
        _touches(t, d.device_id, d.grid, d.dma) and _in_window(t, d.ts_s)
        for t in truth if t.category == "process")]
    per_kdd = 1000 * len(false_cases) / device_days if device_days else 0.0
    report: dict[str, Any] = {
        "scenario": scenario,
        "devices": device_count,
        "duration_h": round(duration_s / 3600, 2),
        "device_days": round(device_days, 1),
        "incidents": [s.doc() for s in incidents],
        "cases": len(cases),
        "false_cases": len(false_cases),
        "false_cases_per_1000_device_days": round(per_kdd, 3),
        "false_alarms": len(false_detections),
        "false_alarms_per_1000_device_days": round(
            1000 * len(false_detections) / device_days if device_days else 0.0, 3),
        "sensor_faults_as_process_cases": sensor_as_process,
        "targets_met": all(s.met for s in incidents)
        and per_kdd < MAX_FALSE_CASES_PER_1000_DEVICE_DAYS,
    }
    if extra:
        report.update(extra)
    return report
