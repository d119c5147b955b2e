"""``rate``: the change of a value per ``per`` against an earlier reading."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from rules.kernels import (
    LATCH_FIELDS,
    FieldSpec,
    Segments,
    SeriesState,
    Transitions,
    ffill_index,
    latched,
)
from rules.kinds.base import F64, I64, B, Env, Latch, Out, RefEnv, RuleKind
from rules.model import DurationNs, Finite, RuleBase

RATE_LOOKBACK = 16
"""How many readings back a rate looks for its reference reading at most."""


class RateRule(RuleBase):
    """Fire when the change of a value, per ``per``, reaches a limit.

    The change is measured from the *reference reading*: the latest reading at
    least ``min_span`` (default ``per``) older, looking back at most
    ``RATE_LOOKBACK`` readings (a series reporting faster uses the reading that many
    back). No rate spans a gap between consecutive readings longer than ``window``;
    without a rate the state is left as it is. ``clear`` (same unit, default the
    limit) is the hysteresis: resolve only when the rate is back below it.
    ``spike_filter`` (default on): the change is measured from the reference reading
    or one of the ``spike_readings`` readings before it, whichever gives the smallest
    change, so an excursion of up to ``spike_readings`` readings and its return are
    not a rise and a drop.
    """

    kind: Literal["rate"]
    metric: str = Field(min_length=1, max_length=100)
    max_rise: Finite | None = Field(default=None, gt=0)
    max_drop: Finite | None = Field(default=None, gt=0)
    clear: Finite | None = Field(default=None, ge=0)
    per_ns: DurationNs = Field(default=60_000_000_000, alias="per", gt=0)
    window_ns: DurationNs = Field(default=900_000_000_000, alias="window", gt=0)
    min_span_ns: DurationNs | None = Field(default=None, alias="min_span")
    spike_filter: bool = True
    spike_readings: int = Field(default=2, ge=1, le=8)

    @model_validator(mode="after")
    def _check(self) -> RateRule:
        if (self.max_rise is None) == (self.max_drop is None):
            raise ValueError("a rate rule needs exactly one of 'max_rise' or 'max_drop'")
        limit = self.max_rise if self.max_rise is not None else self.max_drop
        if self.clear is not None and limit is not None and self.clear > limit:
            raise ValueError("'clear' must be <= the limit (hysteresis)")
        return self

    @property
    def span_ns(self) -> int:
        """Minimum time between a reading and its reference reading."""
        return self.per_ns if self.min_span_ns is None else self.min_span_ns

    @property
    def depth(self) -> int:
        """Readings before the reference reading the spike filter also considers."""
        return self.spike_readings if self.spike_filter else 0



def rate_fields(rule: RateRule) -> dict[str, FieldSpec]:
    """State of a rate rule: a ring of the last ``RATE_LOOKBACK + depth`` readings
    (``count`` readings ever written, the next goes to slot ``count % width``) and when
    the current run began."""
    width = RATE_LOOKBACK + rule.depth
    return {**LATCH_FIELDS, "count": (np.int64, 0, 0), "run_t": (np.int64, 0, 0),
            "hist_t": (np.int64, 0, width), "hist_v": (np.float64, 0.0, width)}


class _History:
    """The readings before each row of a batch: earlier rows of its series in the batch,
    then the series' ring."""

    def __init__(self, state: SeriesState, series: I64, ts: I64, value: F64,
                 seg: Segments) -> None:
        self.hist_t, self.hist_v = state["hist_t"], state["hist_v"]
        self.width = self.hist_t.shape[1]
        self.ts, self.value, self.series = ts, value, series
        self.rows = seg.rows
        self.rank = seg.rows - seg.first
        self.count = state["count"][series]
        self.local = self.count % self.width  # the slot the next reading goes to
        self.base = series * self.width

    def _where(self, b: I64, rows: I64 | None) -> tuple[B, I64, I64, B]:
        """(in the batch, batch index, flat ring index, exists); indices are only
        meaningful where used (``take`` clips them)."""
        if rows is None:
            r, count, local, base, idx = (self.rank, self.count, self.local, self.base,
                                          self.rows)
        else:
            r, count, local, base, idx = (self.rank[rows], self.count[rows], self.local[rows],
                                          self.base[rows], rows)
        in_batch = b <= r
        deep = b - r  # 1 .. width where the ring is read
        exists = in_batch | (deep <= count)
        slot = local - deep
        slot += self.width * (slot < 0)
        return in_batch, idx - b, base + slot, exists

    def time(self, b: I64, rows: I64 | None = None) -> tuple[I64, B]:
        """Time and existence of the reading ``b`` readings before each row."""
        in_batch, bi, flat, exists = self._where(b, rows)
        t = np.where(in_batch, self.ts.take(bi, mode="clip"),
                     self.hist_t.ravel().take(flat, mode="clip"))
        return t, exists

    def back(self, b: I64, rows: I64 | None = None) -> tuple[I64, F64, B]:
        """Time, value and existence of the reading ``b`` readings before each row."""
        in_batch, bi, flat, exists = self._where(b, rows)
        t = np.where(in_batch, self.ts.take(bi, mode="clip"),
                     self.hist_t.ravel().take(flat, mode="clip"))
        v = np.where(in_batch, self.value.take(bi, mode="clip"),
                     self.hist_v.ravel().take(flat, mode="clip"))
        return t, v, exists


def rate_kernel(rule: RateRule, state: SeriesState, series: I64, ts: I64,
                value: F64) -> Transitions:
    """Change per ``per`` since the reference reading: the latest reading at least
    ``min_span`` older, at most ``RATE_LOOKBACK`` readings back, with no gap longer than
    ``window`` between them. The spike filter also takes the ``spike_readings`` readings
    before the reference and keeps the smallest change."""
    seg = Segments.of(series)
    n = series.shape[0]
    h = _History(state, series, ts, value, seg)
    pt, has = h.time(np.ones(n, dtype=np.int64))
    brk = ~has | ((ts - pt) > rule.window_ns)
    i_brk, has_brk = ffill_index(brk, seg)
    run_t = np.where(has_brk, ts[i_brk], state["run_t"][series])
    # the first b in 1..RATE_LOOKBACK whose reading is old enough (or missing): most
    # often the previous one; else a binary search (times fall as b grows)
    latest = ts - rule.span_ns
    b = np.ones(n, dtype=np.int64)
    rest = np.flatnonzero(has & (pt > latest))
    if rest.shape[0]:
        lo = np.full(rest.shape[0], 2, dtype=np.int64)
        hi = np.full(rest.shape[0], RATE_LOOKBACK + 1, dtype=np.int64)
        late = latest[rest]
        for _ in range(RATE_LOOKBACK.bit_length()):
            mid = (lo + hi) // 2
            t_m, ex = h.time(np.minimum(mid, RATE_LOOKBACK), rest)
            low = (lo < hi) & (~ex | (t_m <= late))
            hi = np.where(low, mid, hi)
            lo = np.where(low | (lo >= hi), lo, mid + 1)
        b[rest] = np.minimum(lo, RATE_LOOKBACK)  # none old enough: the oldest looked at
    t_j, ref, ex = h.back(b)
    valid = ex & (t_j >= run_t)
    rows = np.flatnonzero(valid)
    b, t_j, ref, rt = b[rows], t_j[rows], ref[rows], run_t[rows]
    rise = rule.max_rise is not None
    for d in range(1, rule.depth + 1):
        t_d, v_d, ex = h.back(b + d, rows)
        ok = ex & (t_d >= rt)
        ref = np.where(ok, np.maximum(ref, v_d) if rise else np.minimum(ref, v_d), ref)
    rate = np.full(n, np.nan)
    rate[rows] = (value[rows] - ref) * float(rule.per_ns) / (ts[rows] - t_j).astype(np.float64)
    shown = np.where(valid, rate, value)
    if rule.max_rise is not None:
        clear = rule.clear if rule.clear is not None else rule.max_rise
        set_ev, reset_ev = valid & (rate >= rule.max_rise), valid & (rate < clear)
    else:
        assert rule.max_drop is not None
        clear = rule.clear if rule.clear is not None else rule.max_drop
        set_ev, reset_ev = valid & (rate <= -rule.max_drop), valid & (rate > -clear)
    # the ring takes the last `width` rows of each series
    ends = seg.end_idx
    length = (ends - seg.start_idx + 1)[np.cumsum(seg.starts) - 1]
    keep = np.flatnonzero(h.rank >= length - h.width)
    slot = (h.count[keep] + h.rank[keep]) % h.width
    h.hist_t[series[keep], slot] = ts[keep]
    h.hist_v[series[keep], slot] = value[keep]
    s_end = series[ends]
    state["count"][s_end] = h.count[ends] + h.rank[ends] + 1
    state["run_t"][s_end] = run_t[ends]
    return latched(state, rule, series, ts, shown, set_ev, reset_ev, seg)



# ---------------------------------------------------------------- reference


@dataclass
class RateRef:
    """Reference state of one series: the latch, recent readings, the run's start."""

    latch: Latch = field(default_factory=Latch)
    hist: list[tuple[int, float]] = field(default_factory=list)
    run_t: int = 0


def rate_step(rule: RateRule, st: RateRef, t: int, v: float) -> list[Out]:
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



class RateKind(RuleKind[RateRule]):
    """``rate``: NaN readings are dropped."""

    name = "rate"
    model = RateRule

    def state_fields(self, rule: RateRule) -> dict[str, FieldSpec]:
        """Latch and the ring of recent readings."""
        return rate_fields(rule)

    def kernel(self, rule: RateRule, env: Env, series: I64, ts: I64, value: F64
               ) -> Transitions:
        """See :func:`rate_kernel`."""
        return rate_kernel(rule, env.state, series, ts, value)

    def ref_state(self, rule: RateRule) -> Any:
        """A fresh :class:`RateRef`."""
        return RateRef()

    def ref_step(self, rule: RateRule, st: Any, t: int, v: float, env: RefEnv) -> list[Out]:
        """See :func:`rate_step`."""
        return rate_step(rule, st, t, v)


KIND = RateKind()
