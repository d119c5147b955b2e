"""``mnf``: minimum night flow against the median of past nights."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from rules.kernels import (
    I64_MIN,
    LATCH_FIELDS,
    FieldSpec,
    Segments,
    SeriesState,
    Transitions,
    latched,
    local_ns,
    row_median,
    utc_offset_ns,
)
from rules.kinds.base import F64, I64, B, Env, Latch, Out, RefEnv, RuleKind, median
from rules.model import DAY_NS, Finite, RuleBase


class MnfRule(RuleBase):
    """Minimum night flow: the minimum of each night's ``window`` (local time) against
    the median of the last ``baseline_days`` nights; fire when it exceeds that baseline
    by the fraction ``increase`` and by at least ``min_increase`` (metric units)."""

    kind: Literal["mnf"]
    metric: str = Field(min_length=1, max_length=100)
    window: str = "02:00-04:00"
    baseline_days: int = Field(default=7, ge=2, le=60)
    min_days: int = Field(default=3, ge=1, le=60)
    increase: Finite = Field(default=0.3, gt=0, le=100)
    min_increase: Finite = Field(default=0.0, ge=0)
    clear: Finite | None = Field(default=None, ge=0)

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        parse_window(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> MnfRule:
        if self.min_days > self.baseline_days:
            raise ValueError("'min_days' must be <= 'baseline_days'")
        if self.clear is not None and self.clear > self.increase:
            raise ValueError("'clear' must be <= 'increase' (hysteresis)")
        return self

    @property
    def window_ns(self) -> tuple[int, int]:
        """Start and end of the nightly window, ns after local midnight."""
        return parse_window(self.window)


def parse_window(text: str) -> tuple[int, int]:
    """``"02:00-04:00"`` → (start, end) in ns after midnight; start < end."""
    match = re.fullmatch(r"\s*(\d\d):(\d\d)\s*-\s*(\d\d):(\d\d)\s*", text)
    if not match:
        raise ValueError(f"invalid window {text[:40]!r}: use 'HH:MM-HH:MM', e.g. '02:00-04:00'")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"invalid window {text!r}: hours 00-24, minutes 00-59")
    start, end = (h1 * 60 + m1) * 60_000_000_000, (h2 * 60 + m2) * 60_000_000_000
    if start >= end:
        raise ValueError(f"invalid window {text!r}: start must be before end, same day")
    return start, end


def mnf_fields(rule: MnfRule) -> dict[str, FieldSpec]:
    """State of an mnf rule: the night in progress and a ring of past nights' minima."""
    return {**LATCH_FIELDS, "pend_day": (np.int64, I64_MIN, 0),
            "pend_min": (np.float64, 0.0, 0), "nights": (np.int64, 0, 0),
            "ring": (np.float64, np.nan, rule.baseline_days)}


def mnf_judge(rule: MnfRule, mnf: F64, base: F64, known: B) -> tuple[B, B]:
    """(set, reset) of nights with minimum ``mnf`` against ``base`` (where ``known``)."""
    clear = rule.clear if rule.clear is not None else rule.increase
    high = np.maximum(base * (1.0 + rule.increase), base + rule.min_increase)
    set_ev = known & (mnf >= high) & (mnf > base)
    reset_ev = known & ~set_ev & (mnf < np.maximum(base * (1.0 + clear),
                                                   base + rule.min_increase))
    return set_ev, reset_ev


def mnf_kernel(rule: MnfRule, state: SeriesState, series: I64, ts: I64, value: F64,
               tz: str) -> Transitions:
    """Each night's minimum is judged at the first reading after its window ends."""
    n = series.shape[0]
    seg = Segments.of(series)
    w_start, w_end = rule.window_ns
    loc = local_ns(ts, tz)
    day, tod = loc // DAY_NS, loc % DAY_NS
    inwin = (tod >= w_start) & (tod < w_end)
    key = day * 2 + (tod >= w_end)
    seg_id = np.cumsum(seg.starts) - 1
    kmin = int(key.min())
    comb = seg_id * (1 << 40) + (key - kmin)
    # nights in this batch: groups of in-window rows by (series, day)
    idx = np.flatnonzero(inwin)
    if idx.shape[0]:
        gk = seg_id[idx] * (1 << 40) + (day[idx] - int(day.min()))
        gstart = np.ones(idx.shape[0], dtype=np.bool_)
        gstart[1:] = gk[1:] != gk[:-1]
        g_first = idx[gstart]
        g_min = np.minimum.reduceat(value[idx], np.flatnonzero(gstart))
        g_seg, g_day = seg_id[g_first], day[g_first]
    else:
        g_seg = g_day = np.empty(0, np.int64)
        g_min = np.empty(0, np.float64)
    # nights pending from earlier batches join (or precede) the first group
    seg_series = series[seg.starts]
    pend_day, pend_min = state["pend_day"], state["pend_min"]
    p_seg = np.flatnonzero(pend_day[seg_series] != I64_MIN)
    p_day, p_min = pend_day[seg_series[p_seg]], pend_min[seg_series[p_seg]]
    first_g = np.searchsorted(g_seg, p_seg)
    merge = np.zeros(p_seg.shape[0], dtype=np.bool_)
    if g_seg.shape[0]:
        at = np.minimum(first_g, g_seg.shape[0] - 1)
        merge = (first_g < g_seg.shape[0]) & (g_seg[at] == p_seg) & (g_day[at] == p_day)
        mg = first_g[merge]
        g_min[mg] = np.minimum(g_min[mg], p_min[merge])
    keep = ~merge
    n_seg = np.concatenate([p_seg[keep], g_seg])
    n_day = np.concatenate([p_day[keep], g_day])
    n_min = np.concatenate([p_min[keep], g_min])
    order = np.lexsort((n_day, n_seg))
    n_seg, n_day, n_min = n_seg[order], n_day[order], n_min[order]
    # the completing row: first row of the series with key >= 2 * day + 1
    target = n_seg * (1 << 40) + np.maximum(n_day * 2 + 1 - kmin, 0)
    pos = np.searchsorted(comb, target, side="left")
    done = pos < n
    done[done] = seg_id[pos[done]] == n_seg[done]
    set_ev = np.zeros(n, dtype=np.bool_)
    reset_ev = np.zeros(n, dtype=np.bool_)
    shown = value.copy()
    # nights still open are pending; series whose nights all completed have none
    n_series = seg_series[n_seg]
    pend_day[seg_series] = I64_MIN
    pend_day[n_series[~done]] = n_day[~done]
    pend_min[n_series[~done]] = n_min[~done]
    c_idx = np.flatnonzero(done)
    if c_idx.shape[0]:
        c_seg = n_seg[c_idx]
        nstart = np.ones(c_idx.shape[0], dtype=np.bool_)
        nstart[1:] = c_seg[1:] != c_seg[:-1]
        nrank = np.arange(c_idx.shape[0]) - np.flatnonzero(nstart)[np.cumsum(nstart) - 1]
        ring, nights = state["ring"], state["nights"]
        bdays = rule.baseline_days
        for k in range(int(nrank.max()) + 1):
            sel = c_idx[nrank == k]
            s, mnf, row = n_series[sel], n_min[sel], pos[sel]
            cnt = np.minimum(nights[s], bdays)
            base = row_median(ring[s], cnt)
            known = cnt >= rule.min_days
            st_ev, rs_ev = mnf_judge(rule, mnf, base, known)
            set_ev[row], reset_ev[row], shown[row] = st_ev, rs_ev, mnf
            push = ~st_ev
            sp = s[push]
            ring[sp, nights[sp] % bdays] = mnf[push]
            nights[sp] += 1
    return latched(state, rule, series, ts, shown, set_ev, reset_ev, seg)


# ---------------------------------------------------------------- reference


@dataclass
class MnfRef:
    """Reference state of one series: the latch, the night in progress, past nights."""

    latch: Latch = field(default_factory=Latch)
    pend_day: int | None = None
    pend_min: float = 0.0
    nights: list[float] = field(default_factory=list)


def mnf_step(rule: MnfRule, st: MnfRef, t: int, v: float, tz: str) -> list[Out]:
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
        base = median(recent) if recent else math.nan
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



class MnfKind(RuleKind[MnfRule]):
    """``mnf``: NaN readings are dropped; nights are local time (the engine's zone)."""

    name = "mnf"
    model = MnfRule

    def state_fields(self, rule: MnfRule) -> dict[str, FieldSpec]:
        """See :func:`mnf_fields`."""
        return mnf_fields(rule)

    def kernel(self, rule: MnfRule, env: Env, series: I64, ts: I64, value: F64
               ) -> Transitions:
        """See :func:`mnf_kernel`."""
        return mnf_kernel(rule, env.state, series, ts, value, env.timezone)

    def ref_state(self, rule: MnfRule) -> Any:
        """A fresh :class:`MnfRef`."""
        return MnfRef()

    def ref_step(self, rule: MnfRule, st: Any, t: int, v: float, env: RefEnv) -> list[Out]:
        """See :func:`mnf_step`."""
        return mnf_step(rule, st, t, v, env.timezone)


KIND = MnfKind()
