"""Reference implementation: every kind, one reading at a time, in plain Python.

Small and readable on purpose; the numpy kernels must produce exactly the same
transitions (hypothesis tests prove it). Each kind's step is in its module in
:mod:`rules.kinds` (``ref_step``, ``ref_late``, ``ref_tick`` of its
:class:`~rules.kinds.base.RuleKind`); this module feeds them. Readings are
``(series, ts_ns, value)``; a reading older than the last reading of its series
is late and changes no state: kinds that judge late readings (``threshold`` and
``zscore`` rules without ``for``) judge it, the others ignore it; a reading at the
series' last time is a duplicate. NaN values are ignored by every kind that does
not read them (all but ``threshold``, where they neither set nor reset the
condition, and ``stale``, where they count as a reading).
"""

from __future__ import annotations

import math
from typing import Any

from devices.series import SeriesTable
from rules.kinds import kind_of
from rules.kinds.base import FindingTracker, LateJudged, RefEnv
from rules.kinds.threshold import KIND as THRESHOLD
from rules.kinds.threshold import ThresholdRule, threshold_late_step, threshold_step
from rules.model import Finding, FindingState, Rule


def threshold_reference(rule: ThresholdRule, readings: list[tuple[int, int, float]]
                        ) -> list[tuple[int, int, bool]]:
    """(series, ts, value) in arrival order, one reading per batch → (series, ts, firing);
    readings older than their series' last one are judged as late (firing only)."""
    states: dict[int, LateJudged] = {}
    last: dict[int, int] = {}
    out: list[tuple[int, int, bool]] = []
    for s, t, v in readings:
        if s in last and t <= last[s]:
            if t < last[s] and THRESHOLD.judges_late(rule):
                out += [(s, ts, fire)
                        for ts, fire, _ in threshold_late_step(rule, states[s], t, v)]
            continue
        last[s] = t
        for ts, fire, _ in threshold_step(rule, states.setdefault(s, LateJudged()), t, v):
            out.append((s, ts, fire))
    return out


class ReferenceEngine:
    """The engine's contract in plain Python: same inputs, same findings, same order."""

    def __init__(self, rules: list[Rule], series: SeriesTable, *,
                 timezone: str = "Asia/Shanghai") -> None:
        self.rules = rules
        self.series = series
        self.timezone = timezone
        self.kinds = [kind_of(r) for r in rules]
        self.last: dict[int, int] = {}
        self.states: dict[tuple[int, int], Any] = {}
        self._cache: dict[tuple[str, int], bool] = {}
        self.trackers: dict[int, FindingTracker] = {}
        self.shared: dict[Any, Any] = {}  # per-rule state across series (multivariate)
        for i, (rule, kind) in enumerate(zip(rules, self.kinds, strict=True)):
            tracker = kind.tracker(rule)
            if tracker is not None:
                self.trackers[i] = tracker

    def _applies(self, i: int, sid: int) -> bool:
        rule = self.rules[i]
        key = (rule.id, sid)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self.kinds[i].applies(
                rule, self.series.devices[sid].type, self.series.metrics[sid])
        return hit

    def _state(self, i: int, sid: int) -> Any:
        st = self.states.get((i, sid))
        if st is None:
            st = self.states[(i, sid)] = self.kinds[i].ref_state(self.rules[i])
        return st

    def evaluate(self, readings: list[tuple[int, int, float]]) -> list[Finding]:
        """One batch of (series, ts, value) rows, fed one at a time."""
        raw: list[tuple[int, int, int, bool, float, bool]] = []
        late_seen: set[tuple[int, int]] = set()
        for s, t, v in sorted(readings, key=lambda r: r[1]):  # time order, ties by arrival
            late = s in self.last and t < self.last[s]
            if s in self.last and t <= self.last[s]:
                if not late or (s, t) in late_seen:
                    continue  # a duplicate
                late_seen.add((s, t))
            else:
                self.last[s] = t
            env = RefEnv(self.series.devices[s], self.series.metrics[s], self.timezone,
                         self.series, self.shared)
            nan = math.isnan(v)
            for i, rule in enumerate(self.rules):
                kind = self.kinds[i]
                if i in self.trackers or not self._applies(i, s):
                    continue
                st = self._state(i, s)
                if nan and not kind.reads_nan:
                    continue
                if late:
                    if not kind.judges_late(rule):
                        continue
                    out = kind.ref_late(rule, st, t, v, env)
                else:
                    out = kind.ref_step(rule, st, t, v, env)
                at = kind.report_series(rule, env, s) if out else s
                raw += [(ts, i, at, fire, value, late) for ts, fire, value in out]
        return self._findings(raw)

    def tick(self, now: int) -> list[Finding]:
        """Time-driven evaluation of the kinds that tick (``stale``)."""
        raw: list[tuple[int, int, int, bool, float, bool]] = []
        for i, rule in enumerate(self.rules):
            kind = self.kinds[i]
            if kind.ticks:
                for s in range(len(self.series)):
                    st = self.states.get((i, s))
                    if st is not None and self._applies(i, s):
                        raw += [(ts, i, s, f, v, False)
                                for ts, f, v in kind.ref_tick(rule, st, now)]
        return self._findings(raw)

    def _findings(self, raw: list[tuple[int, int, int, bool, float, bool]]) -> list[Finding]:
        out: list[Finding] = []
        for ts, i, s, fire, value, late in sorted(
                raw, key=lambda r: (r[0], r[1], r[2], not r[3])):
            rule = self.rules[i]
            dev = self.series.devices[s]
            f = Finding(rule.id, dev.id, self.series.metrics[s],
                        FindingState.FIRING if fire else FindingState.RESOLVED,
                        rule.severity, ts, value, late)
            out.append(f)
            for tracker in self.trackers.values():
                c = tracker.feed(f, dev)
                if c is not None:
                    out.append(c)
        return out
