"""Threshold kernel: hysteresis and ``for`` over whole batches, with a reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rules.model import ThresholdRule

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]


@dataclass(slots=True)
class ThresholdState:
    """Per-series state of one threshold rule, indexed by series id."""

    raw_on: B
    since_ns: I64
    firing: B
    last_ts: I64

    @classmethod
    def sized(cls, n: int) -> ThresholdState:
        """State for ``n`` series, all quiet."""
        return cls(
            raw_on=np.zeros(n, dtype=np.bool_),
            since_ns=np.zeros(n, dtype=np.int64),
            firing=np.zeros(n, dtype=np.bool_),
            last_ts=np.full(n, np.iinfo(np.int64).min, dtype=np.int64),
        )

    def grow(self, n: int) -> None:
        """Make room for at least ``n`` series."""
        have = self.raw_on.shape[0]
        if n <= have:
            return
        extra = ThresholdState.sized(max(n, have * 2) - have)
        self.raw_on = np.concatenate([self.raw_on, extra.raw_on])
        self.since_ns = np.concatenate([self.since_ns, extra.since_ns])
        self.firing = np.concatenate([self.firing, extra.firing])
        self.last_ts = np.concatenate([self.last_ts, extra.last_ts])


def _limits(rule: ThresholdRule) -> tuple[bool, float, float]:
    if rule.above is not None:
        return True, rule.above, rule.clear if rule.clear is not None else rule.above
    assert rule.below is not None
    return False, rule.below, rule.clear if rule.clear is not None else rule.below


def threshold_kernel(
    rule: ThresholdRule, state: ThresholdState, series: I64, ts: I64, value: F64
) -> tuple[I64, B]:
    """Evaluate rows sorted by (series, ts), all newer than the series' last time.

    Returns the row indices where the firing state changed and the new state
    at those rows (True = firing). Updates ``state`` in place.
    """
    n = series.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.bool_)
    upward, limit, clear = _limits(rule)
    if upward:
        set_ev, reset_ev = value >= limit, value < clear
    else:
        set_ev, reset_ev = value <= limit, value > clear
    rows = np.arange(n, dtype=np.int64)
    starts = np.ones(n, dtype=np.bool_)
    starts[1:] = series[1:] != series[:-1]
    seg_first = np.flatnonzero(starts)[np.cumsum(starts) - 1]

    def ffill(mask: B) -> tuple[I64, B]:
        """Index of the last row in the segment (up to here) where mask held."""
        acc = np.maximum.accumulate(np.where(mask, rows, -1))
        return acc, acc >= seg_first

    last_ev, has_ev = ffill(set_ev | reset_ev)
    raw = np.where(has_ev, set_ev[np.maximum(last_ev, 0)], state.raw_on[series])
    prev_raw = np.where(starts, state.raw_on[series], np.roll(raw, 1))
    on_edge = raw & ~prev_raw
    last_on, has_on = ffill(on_edge)
    since = np.where(has_on, ts[np.maximum(last_on, 0)], state.since_ns[series])
    fire = raw & (ts - since >= rule.for_ns)
    prev_fire = np.where(starts, state.firing[series], np.roll(fire, 1))
    changed = np.flatnonzero(fire != prev_fire)

    ends = np.ones(n, dtype=np.bool_)
    ends[:-1] = starts[1:]
    last = np.flatnonzero(ends)
    s_last = series[last]
    state.raw_on[s_last] = raw[last]
    state.since_ns[s_last] = since[last]
    state.firing[s_last] = fire[last]
    state.last_ts[s_last] = ts[last]
    return changed, fire[changed]


def threshold_reference(
    rule: ThresholdRule, readings: list[tuple[int, int, float]]
) -> list[tuple[int, int, bool]]:
    """One reading at a time: (series, ts, value) in arrival order → (series, ts, firing).

    Readings not newer than the series' last reading are ignored.
    """
    upward, limit, clear = _limits(rule)
    raw_on: dict[int, bool] = {}
    since: dict[int, int] = {}
    firing: dict[int, bool] = {}
    last: dict[int, int] = {}
    out: list[tuple[int, int, bool]] = []
    for s, t, v in readings:
        if s in last and t <= last[s]:
            continue
        last[s] = t
        on = raw_on.get(s, False)
        if (upward and v >= limit) or (not upward and v <= limit):
            if not on:
                since[s] = t
            on = True
        elif (upward and v < clear) or (not upward and v > clear):
            on = False
        raw_on[s] = on
        fire = on and t - since[s] >= rule.for_ns
        if fire != firing.get(s, False):
            out.append((s, t, fire))
        firing[s] = fire
    return out
