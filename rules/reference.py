"""Reference implementation: every kind, one reading at a time, in plain Python.

Small and readable on purpose; the numpy kernels in :mod:`rules.kernels` must
produce exactly the same transitions (hypothesis tests prove it). Readings are
``(series, ts_ns, value)``; a reading older than the last reading of its series
is late and changes no state: ``threshold`` and ``zscore`` rules without ``for``
judge it (:func:`late_step`), the others ignore it; a reading at the series' last
time is a duplicate. NaN values are ignored by every kind but
``threshold`` (where they neither set nor reset the condition) and ``stale``
(where they count as a reading).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from devices.series import SeriesTable
from rules.composite import CompositeTracker
from rules.engine import device_limits
from rules.kernels import decay, mnf_judge, threshold_limits, utc_offset_ns, zscore_alpha
from rules.model import (
    DAY_NS,
    RATE_LOOKBACK,
    CompositeRule,
    Finding,
    FindingState,
    FlatlineRule,
    MnfRule,
    RateRule,
    ReadingRule,
    Rule,
    StaleRule,
    ThresholdRule,
    ZscoreRule,
    parse_duration_ns,
)

Out = tuple[int, bool, float]  # (ts, firing, value)
NEVER = -(2**63)


@dataclass
class Latch:
    """Hysteresis + ``for`` + ``keep_firing_for`` of one series."""

    raw: bool = False
    on_since: int = 0
    off_since: int = 0
    firing: bool = False
    last_change: int = NEVER

    def step(self, rule: Any, t: int, set_: bool, reset: bool, value: float) -> list[Out]:
        """Feed one reading's events; returns the transition, if any."""
        raw = True if set_ else False if reset else self.raw
        if raw and not self.raw:
            self.on_since = t
        if not raw and self.raw:
            self.off_since = t
        self.raw = raw
        if raw:
            fire = self.firing or t - self.on_since >= rule.for_ns
        else:
            fire = self.firing and t - self.off_since < rule.keep_firing_for_ns
        changed = fire != self.firing
        self.firing = fire
        if changed:
            self.last_change = t
        return [(t, fire, value)] if changed else []


@dataclass
class SeriesRef:
    """Everything the reference remembers about one (series, rule)."""

    latch: Latch = field(default_factory=Latch)
    seen: bool = False
    last_t: int = 0
    last_v: float = 0.0
    hist: list[tuple[int, float]] = field(default_factory=list)
    late_on: bool = False
    late_t: int = NEVER
    run_t: int = 0
    run_v: float = 0.0
    count: int = 0
    mean: float = 0.0
    var: float = 0.0
    buf: list[float] = field(default_factory=list)
    pend_day: int | None = None
    pend_min: float = 0.0
    nights: list[float] = field(default_factory=list)
    stale_firing: bool = False


def _median(values: list[float]) -> float:
    v = sorted(values)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2.0


def threshold_step(rule: ThresholdRule, st: SeriesRef, t: int, v: float,
                   limit: float | None = None, clear: float | None = None) -> list[Out]:
    """Threshold with hysteresis (``limit``/``clear`` override the rule's own)."""
    upward, lim, clr = threshold_limits(rule)
    lim = lim if limit is None else limit
    clr = clr if clear is None else clear
    if upward:
        return st.latch.step(rule, t, v >= lim, v < clr, v)
    return st.latch.step(rule, t, v <= lim, v > clr, v)


def rate_step(rule: RateRule, st: SeriesRef, t: int, v: float) -> list[Out]:
    """Rate against the reference reading: the latest one at least ``min_span`` older,
    at most ``RATE_LOOKBACK`` back, no gap over ``window`` in between (spike filter:
    or one of the ``spike_readings`` before it, whichever changes least)."""
    if not st.hist or t - st.hist[-1][0] > rule.window_ns:
        st.run_t = t  # a new run: nothing before the gap counts

    def usable(b: int) -> bool:
        return b <= len(st.hist) and st.hist[-b][0] >= st.run_t

    j = 0
    for b in range(1, RATE_LOOKBACK + 1):
        if not usable(b):
            break
        if st.hist[-b][0] <= t - rule.span_ns or b == RATE_LOOKBACK:
            j = b
            break
    rate = v
    if j:
        t_j, ref = st.hist[-j]
        for b in range(j + 1, j + rule.depth + 1):
            if usable(b):
                ref = max(ref, st.hist[-b][1]) if rule.max_rise is not None else min(
                    ref, st.hist[-b][1])
        rate = (v - ref) * float(rule.per_ns) / float(t - t_j)
    st.hist.append((t, v))
    del st.hist[:-(RATE_LOOKBACK + rule.depth)]
    valid = j > 0
    if rule.max_rise is not None:
        clear = rule.clear if rule.clear is not None else rule.max_rise
        return st.latch.step(rule, t, valid and rate >= rule.max_rise,
                             valid and rate < clear, rate)
    assert rule.max_drop is not None
    clear = rule.clear if rule.clear is not None else rule.max_drop
    return st.latch.step(rule, t, valid and rate <= -rule.max_drop, valid and rate > -clear,
                         rate)


def flatline_step(rule: FlatlineRule, st: SeriesRef, t: int, v: float) -> list[Out]:
    """Unchanged (within tolerance) since the run started, for ``window``."""
    tol = max(rule.tolerance, rule.relative_tolerance * abs(st.last_v))
    if not st.seen or abs(v - st.last_v) > tol:
        st.run_t, st.run_v = t, v
    st.seen, st.last_t, st.last_v = True, t, v
    run_tol = max(rule.tolerance, rule.relative_tolerance * abs(st.run_v))
    flat = t - st.run_t >= rule.window_ns and abs(v - st.run_v) <= run_tol
    return st.latch.step(rule, t, flat, not flat, v)


def z_of(rule: ZscoreRule, st: SeriesRef, v: float) -> float | None:
    """z of ``v`` against the series' history as it is (None: not judged yet)."""
    if rule.robust:
        if st.count < rule.window:
            return None
        med = _median(st.buf)
        devs = [abs(b - med) for b in st.buf]
        mad = _median(devs) * 1.4826
        meanad = float(np.array(devs).mean()) * 1.2533
        scale = max(mad if mad > 0 else meanad, rule.min_std)
        return (v - med) / scale if scale > 0 else None
    std = max(math.sqrt(st.var), rule.min_std)
    if st.count >= rule.min_samples and std > 0:
        return (v - st.mean) / std
    return None


def z_events(rule: ZscoreRule, z: float | None) -> tuple[bool, bool]:
    """(set, reset) of one z."""
    if z is None:
        return False, False
    c = rule.clear_z
    if rule.direction == "up":
        return z >= rule.z, z < c
    if rule.direction == "down":
        return z <= -rule.z, z > -c
    return abs(z) >= rule.z, abs(z) < c


def zscore_step(rule: ZscoreRule, st: SeriesRef, t: int, v: float) -> list[Out]:
    """z against the history before this reading; then the history takes it in."""
    z = z_of(rule, st, v)
    if rule.robust:
        if len(st.buf) < rule.window:
            st.buf.append(v)
        else:
            st.buf[st.count % rule.window] = v
    else:
        alpha = zscore_alpha(rule)
        if alpha is None:
            hl = float(parse_duration_ns(rule.halflife))
            alpha = 1.0 - float(decay(np.array([float(t - st.last_t) / hl]))[0])
        d = v - st.mean
        if st.count == 0:
            st.mean, st.var = v, 0.0
        else:
            incr = alpha * d
            st.mean, st.var = st.mean + incr, (1.0 - alpha) * (st.var + d * incr)
    st.count += 1
    st.last_t = t
    set_, reset = z_events(rule, z)
    return st.latch.step(rule, t, set_, reset, v)


def late_step(rule: Rule, st: SeriesRef, t: int, v: float, limit: float | None = None,
              clear: float | None = None) -> list[Out]:
    """A late reading: never changes the rule's state. For ``threshold``/``zscore``
    without ``for``, while the series is not firing and the reading is after its last
    transition and after the late readings judged before, it goes through the late
    hysteresis (reset by a later live transition); turning it on is a late firing."""
    if not isinstance(rule, ThresholdRule | ZscoreRule) or rule.for_ns:
        return []
    if isinstance(rule, ZscoreRule) and math.isnan(v):
        return []
    lt = st.latch
    if lt.firing or t <= max(lt.last_change, st.late_t):
        return []
    on = st.late_on and st.late_t > lt.last_change
    if isinstance(rule, ThresholdRule):
        upward, lim, clr = threshold_limits(rule)
        lim = lim if limit is None else limit
        clr = clr if clear is None else clear
        set_, reset = (v >= lim, v < clr) if upward else (v <= lim, v > clr)
    else:
        set_, reset = z_events(rule, z_of(rule, st, v))
    now = True if set_ else False if reset else on
    st.late_on, st.late_t = now, t
    return [(t, True, v)] if now and not on else []


def stale_step(rule: StaleRule, st: SeriesRef, t: int, v: float) -> list[Out]:
    """A gap of ``after`` fires at the gap's start + after and resolves now."""
    out: list[Out] = []
    if st.stale_firing:
        out.append((t, False, v))
    elif st.seen and t - st.last_t >= rule.after_ns:
        out += [(st.last_t + rule.after_ns, True, st.last_v), (t, False, v)]
    st.seen, st.last_t, st.last_v, st.stale_firing = True, t, v, False
    return out


def stale_tick(rule: StaleRule, st: SeriesRef, now: int) -> list[Out]:
    """Fire a silent series at ``last + after`` once ``now`` has passed it."""
    if st.seen and not st.stale_firing and now - st.last_t >= rule.after_ns:
        st.stale_firing = True
        return [(st.last_t + rule.after_ns, True, st.last_v)]
    return []


def mnf_step(rule: MnfRule, st: SeriesRef, t: int, v: float, tz: str) -> list[Out]:
    """Track the night's minimum; judge a night at the first reading after its window."""
    start, end = rule.window_ns
    local = t + utc_offset_ns(tz, t // DAY_NS)
    day, tod = local // DAY_NS, local % DAY_NS
    set_ = reset = False
    shown = v
    if st.pend_day is not None and day * 2 + (tod >= end) >= st.pend_day * 2 + 1:
        mnf, st.pend_day = st.pend_min, None
        recent = st.nights[-rule.baseline_days:]
        known = len(recent) >= rule.min_days
        base = _median(recent) if recent else math.nan
        s_ev, r_ev = mnf_judge(rule, np.array([mnf]), np.array([base]), np.array([known]))
        set_, reset, shown = bool(s_ev[0]), bool(r_ev[0]), mnf
        if not set_:
            st.nights.append(mnf)
    if start <= tod < end:
        if st.pend_day == day:
            st.pend_min = min(st.pend_min, v)
        else:
            st.pend_day, st.pend_min = day, v
    return st.latch.step(rule, t, set_, reset, shown)


def step(rule: ReadingRule | StaleRule, st: SeriesRef, t: int, v: float, tz: str,
         limit: float | None = None, clear: float | None = None) -> list[Out]:
    """One in-order reading of one series through one rule."""
    if isinstance(rule, ThresholdRule):
        return threshold_step(rule, st, t, v, limit, clear)
    if isinstance(rule, StaleRule):
        return stale_step(rule, st, t, v)
    if math.isnan(v):
        return []
    if isinstance(rule, RateRule):
        return rate_step(rule, st, t, v)
    if isinstance(rule, FlatlineRule):
        return flatline_step(rule, st, t, v)
    if isinstance(rule, ZscoreRule):
        return zscore_step(rule, st, t, v)
    return mnf_step(rule, st, t, v, tz)


def threshold_reference(rule: ThresholdRule, readings: list[tuple[int, int, float]]
                        ) -> list[tuple[int, int, bool]]:
    """(series, ts, value) in arrival order, one reading per batch → (series, ts, firing);
    readings older than their series' last one are judged as late (firing only)."""
    states: dict[int, SeriesRef] = {}
    last: dict[int, int] = {}
    out: list[tuple[int, int, bool]] = []
    for s, t, v in readings:
        if s in last and t <= last[s]:
            if t < last[s]:
                out += [(s, ts, fire) for ts, fire, _ in late_step(rule, states[s], t, v)]
            continue
        last[s] = t
        for ts, fire, _ in threshold_step(rule, states.setdefault(s, SeriesRef()), t, v):
            out.append((s, ts, fire))
    return out


class ReferenceEngine:
    """The engine's contract in plain Python: same inputs, same findings, same order."""

    def __init__(self, rules: list[Rule], series: SeriesTable, *,
                 timezone: str = "Asia/Shanghai") -> None:
        self.rules = rules
        self.series = series
        self.timezone = timezone
        self.last: dict[int, int] = {}
        self.states: dict[tuple[int, int], SeriesRef] = {}
        self._cache: dict[tuple[str, int], bool] = {}
        self.trackers = {i: CompositeTracker(r) for i, r in enumerate(rules)
                         if isinstance(r, CompositeRule)}

    def _applies(self, rule: Rule, sid: int) -> bool:
        key = (rule.id, sid)
        hit = self._cache.get(key)
        if hit is None:
            dev = self.series.devices[sid]
            hit = self._cache[key] = ((not rule.device_types or dev.type in rule.device_types)
                                       and fnmatch.fnmatchcase(self.series.metrics[sid],
                                                               rule.metric))
        return hit

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
            for i, rule in enumerate(self.rules):
                if isinstance(rule, CompositeRule) or not self._applies(rule, s):
                    continue
                st = self.states.setdefault((i, s), SeriesRef())
                limit = clear = None
                if isinstance(rule, ThresholdRule):
                    limit, clear = device_limits(rule, self.series.devices[s],
                                                 self.series.metrics[s])
                if late:
                    out = late_step(rule, st, t, v, limit, clear)
                else:
                    out = step(rule, st, t, v, self.timezone, limit, clear)
                raw += [(ts, i, s, fire, value, late) for ts, fire, value in out]
        return self._findings(raw)

    def tick(self, now: int) -> list[Finding]:
        """Time-driven evaluation of stale rules."""
        raw: list[tuple[int, int, int, bool, float, bool]] = []
        for i, rule in enumerate(self.rules):
            if isinstance(rule, StaleRule):
                for s in range(len(self.series)):
                    st = self.states.get((i, s))
                    if st is not None and self._applies(rule, s):
                        raw += [(ts, i, s, f, v, False)
                                for ts, f, v in stale_tick(rule, st, now)]
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
