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


@dataclass(frozen=True, slots=True)
class DetectorScore:
    """How one detector (a rule, or every rule of a kind) did over the labelled windows.

    Window-based and NAB-like: a window with at least one touching alarm is one true
    positive (however many alarms it got), an alarm that touches no window is a false
    positive, a window without an alarm is a false negative.
    """

    alarms: int
    tp: int
    fp: int
    fn: int
    delays_s: dict[str, float]  # detected window id -> first alarm - window start
    device_days: float

    @property
    def precision(self) -> float | None:
        """TP / (TP + FP); None without any alarm."""
        return None if self.tp + self.fp == 0 else self.tp / (self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        """TP / (TP + FN); None without any window."""
        return None if self.tp + self.fn == 0 else self.tp / (self.tp + self.fn)

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall (0 when either is 0 or undefined)."""
        p, r = self.precision or 0.0, self.recall or 0.0
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    def doc(self) -> dict[str, Any]:
        """JSON-ready."""
        delays = sorted(self.delays_s.values())
        mid = len(delays) // 2
        median = None if not delays else (
            delays[mid] if len(delays) % 2 else (delays[mid - 1] + delays[mid]) / 2)
        return {
            "alarms": self.alarms, "tp": self.tp, "fp": self.fp, "fn": self.fn,
            "precision": _r3(self.precision), "recall": _r3(self.recall), "f1": _r3(self.f1),
            "delay_s": {"mean": _round(sum(delays) / len(delays)) if delays else None,
                        "median": _round(median), "max": _round(max(delays, default=None))},
            "delays_s": {k: round(v, 1) for k, v in self.delays_s.items()},
            "false_alarms_per_1000_device_days": round(
                1000 * self.fp / self.device_days if self.device_days else 0.0, 3),
        }


def _r3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def labelled_windows(truth: Sequence[Truth]) -> list[Truth]:
    """The incidents a detector should flag: process incidents and sensor faults (a
    signal that is wrong); comms faults (drop-outs, skew, outages …) are not windows."""
    return [t for t in truth if t.category in ("process", "sensor")]


def detector_score(windows: Sequence[Truth], alarms: Sequence[Detection], *,
                   device_days: float, tolerance_s: float = GRACE_S) -> DetectorScore:
    """Score one detector's ``alarms`` against labelled ``windows``.

    An alarm touches a window when it is on one of the window's devices (or in its DMA,
    for DMA-wide incidents) between the window's start and its end plus ``tolerance_s``.
    """
    delays: dict[str, float] = {}
    fp = 0
    for a in sorted(alarms, key=lambda d: d.ts_s):
        hit = [t for t in windows if _touches(t, a.device_id, a.grid, a.dma)
               and t.start_s <= a.ts_s <= t.end_s + tolerance_s]
        if not hit:
            fp += 1
        for t in hit:
            delays.setdefault(t.id, a.ts_s - t.start_s)
    tp = len(delays)
    return DetectorScore(alarms=len(alarms), tp=tp, fp=fp, fn=len(windows) - tp,
                         delays_s=delays, device_days=device_days)


def detector_report(truth: Sequence[Truth], detections: Sequence[Detection], *,
                    device_days: float, rule_kinds: Mapping[str, str] | None = None,
                    detectors: Sequence[str] = (), tolerance_s: float = GRACE_S
                    ) -> dict[str, Any]:
    """Per detector (each rule that fired or is listed in ``detectors``, and each rule
    kind) precision, recall, F1, detection delay and false alarms per 1,000 device-days."""
    kinds = dict(rule_kinds or {})
    windows = labelled_windows(truth)
    by_rule: dict[str, list[Detection]] = {r: [] for r in detectors}
    for d in detections:
        if d.process:
            by_rule.setdefault(d.rule_id, []).append(d)
    by_kind: dict[str, list[Detection]] = {}
    for rule_id, alarms in by_rule.items():
        kind = kinds.get(rule_id, "event" if rule_id.startswith("event:") else "unknown")
        by_kind.setdefault(kind, []).extend(alarms)
    return {
        "windows": len(windows),
        "tolerance_s": tolerance_s,
        "by_rule": {r: {"kind": kinds.get(r, "event" if r.startswith("event:") else "unknown"),
                        **detector_score(windows, a, device_days=device_days,
                                         tolerance_s=tolerance_s).doc()}
                    for r, a in sorted(by_rule.items())},
        "by_kind": {k: detector_score(windows, a, device_days=device_days,
                                      tolerance_s=tolerance_s).doc()
                    for k, a in sorted(by_kind.items())},
    }


def score(
    truth: Sequence[Truth],
    detections: Sequence[Detection],
    cases: Sequence[CaseRecord],
    *,
    device_count: int,
    duration_s: float,
    scenario: str,
    extra: Mapping[str, Any] | None = None,
    rule_kinds: Mapping[str, str] | None = None,
    detectors: Sequence[str] = (),
) -> dict[str, Any]:
    """The evaluation report of one scenario run (``detectors``: per-rule scores, see
    :func:`detector_report`; ``rule_kinds`` maps rule ids to their kind)."""
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
        "detectors": detector_report(truth, detections, device_days=device_days,
                                     rule_kinds=rule_kinds, detectors=detectors),
        "targets_met": all(s.met for s in incidents)
        and per_kdd < MAX_FALSE_CASES_PER_1000_DEVICE_DAYS,
    }
    if extra:
        report.update(extra)
    return report
