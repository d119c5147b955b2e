"""Numpy kernels: every kind over whole batches, plus the shared anti-flap latch.

Every kernel takes rows sorted by (series, time), each newer than everything
before it in its series (the engine sets late readings apart), and returns the
transitions as ``Transitions``. Per-series state lives in a ``SeriesState``
indexed by series id and is updated in place, so that feeding a batch equals
feeding its readings one at a time (proven against :mod:`rules.reference`).
Late readings of ``threshold`` and ``zscore`` rules are judged by
:func:`late_onsets`, which reads the rule state and never writes it.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.model import (
    DAY_NS,
    RATE_LOOKBACK,
    FlatlineRule,
    MnfRule,
    RateRule,
    StaleRule,
    ThresholdRule,
    ZscoreRule,
    parse_duration_ns,
)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
Arr = npt.NDArray[Any]
I64_MIN = np.iinfo(np.int64).min

LATCH_FIELDS: dict[str, tuple[Any, Any, int]] = {
    "raw_on": (np.bool_, False, 0),
    "on_since": (np.int64, 0, 0),
    "off_since": (np.int64, 0, 0),
    "firing": (np.bool_, False, 0),
}


class SeriesState:
    """Named per-series arrays (first axis: series id), grown as series appear."""

    def __init__(self, fields: dict[str, tuple[Any, Any, int]], n: int = 0) -> None:
        self.fields = fields
        self.arrays: dict[str, Arr] = {}
        self.size = 0
        for name, (dtype, fill, width) in fields.items():
            shape = (n, width) if width else (n,)
            self.arrays[name] = np.full(shape, fill, dtype=dtype)
        self.size = n

    def __getitem__(self, name: str) -> Arr:
        return self.arrays[name]

    def grow(self, n: int) -> None:
        """Make room for at least ``n`` series (new rows hold the initial values)."""
        if n <= self.size:
            return
        new = max(n, self.size * 2, 64)
        for name, (dtype, fill, width) in self.fields.items():
            shape = (new - self.size, width) if width else (new - self.size,)
            self.arrays[name] = np.concatenate([self.arrays[name], np.full(shape, fill, dtype)])
        self.size = new

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays."""
        return sum(a.nbytes for a in self.arrays.values())


def stable_order(series: I64) -> I64:
    """``argsort(series, kind="stable")``, as one or two 16-bit radix passes when possible."""
    if series.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    top = int(series.max())
    if int(series.min()) < 0 or top >= 1 << 32:
        return np.argsort(series, kind="stable")
    lo = np.argsort((series & 0xFFFF).astype(np.uint16), kind="stable")
    if top < 1 << 16:
        return lo
    hi = (series[lo] >> 16).astype(np.uint16)
    out: I64 = lo[np.argsort(hi, kind="stable")]
    return out


@dataclass(frozen=True, slots=True)
class Transitions:
    """Rows (or, for time-driven kinds, series) where firing changed."""

    rows: I64
    fire: B
    ts: I64
    value: F64


def empty_transitions() -> Transitions:
    """No transitions."""
    return Transitions(np.empty(0, np.int64), np.empty(0, np.bool_), np.empty(0, np.int64),
                       np.empty(0, np.float64))


@dataclass(frozen=True, slots=True)
class Segments:
    """Run structure of rows sorted by series: where each series' rows start and end."""

    starts: B
    ends: B
    first: I64  # index of the first row of each row's segment
    rows: I64  # 0 .. n-1
    start_idx: I64  # index of each segment's first row
    end_idx: I64  # index of each segment's last row

    @classmethod
    def of(cls, series: I64) -> Segments:
        """Segments of ``series`` (sorted, equal ids adjacent)."""
        n = series.shape[0]
        starts = np.ones(n, dtype=np.bool_)
        np.not_equal(series[1:], series[:-1], out=starts[1:])
        ends = np.ones(n, dtype=np.bool_)
        ends[:-1] = starts[1:]
        rows = np.arange(n, dtype=np.int64)
        first = np.maximum.accumulate(np.where(starts, rows, 0))
        return cls(starts, ends, first, rows, np.flatnonzero(starts), np.flatnonzero(ends))


def ffill_index(mask: B, seg: Segments) -> tuple[I64, B]:
    """Index of the last row (up to and including each row, same segment) where mask held.

    Where there is none the index is -1 (still a valid numpy index: mask it with the
    second result).
    """
    acc = np.maximum.accumulate(np.where(mask, seg.rows, -1))
    return acc, acc >= seg.first


def previous(values: Arr, state: Arr, series: I64, seg: Segments) -> Arr:
    """Each row's previous value in its segment; the series' ``state`` on the first row."""
    out = np.empty_like(values)
    out[1:] = values[:-1]
    out[seg.start_idx] = state[series[seg.start_idx]]
    return out


def latch(state: SeriesState, series: I64, ts: I64, set_ev: B, reset_ev: B, seg: Segments,
          for_ns: int, keep_ns: int) -> tuple[I64, B]:
    """Hysteresis, ``for`` and ``keep_firing_for``; see :func:`latch_all`.

    Series that are quiet (condition off, not firing) and get no ``set`` event in
    this batch cannot change: only the others are computed.
    """
    heads = series[seg.start_idx]
    active = (np.logical_or.reduceat(set_ev, seg.start_idx) | state["raw_on"][heads]
              | state["firing"][heads])
    if not active.any():
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.bool_)
    if active.all():
        return latch_all(state, series, ts, set_ev, reset_ev, seg, for_ns, keep_ns)
    sub = np.flatnonzero(np.repeat(active, seg.end_idx - seg.start_idx + 1))
    ss = series[sub]
    rows, fire = latch_all(state, ss, ts[sub], set_ev[sub], reset_ev[sub], Segments.of(ss),
                           for_ns, keep_ns)
    return sub[rows], fire


def latch_all(state: SeriesState, series: I64, ts: I64, set_ev: B, reset_ev: B,
              seg: Segments, for_ns: int, keep_ns: int) -> tuple[I64, B]:
    """Hysteresis, ``for`` and ``keep_firing_for`` over whole batches.

    ``set_ev`` turns the raw condition on, ``reset_ev`` off, neither leaves it as it
    was (the hysteresis band, or no information). The alert fires once the raw
    condition has held for ``for_ns`` and resolves once it has been off for
    ``keep_ns``. Returns the rows where firing changed and the new firing value.
    """
    raw_on, on_since, off_since, firing = (state["raw_on"], state["on_since"],
                                           state["off_since"], state["firing"])
    last_ev, has_ev = ffill_index(set_ev | reset_ev, seg)
    raw = np.where(has_ev, set_ev[last_ev], raw_on[series])
    prev_raw = previous(raw, raw_on, series, seg)
    on_edge, off_edge = raw & ~prev_raw, ~raw & prev_raw
    i_on, has_on = ffill_index(on_edge, seg)
    i_off, has_off = ffill_index(off_edge, seg)
    t_on = np.where(has_on, ts[i_on], on_since[series])
    t_off = np.where(has_off, ts[i_off], off_since[series])
    cond_on = (ts - t_on) >= for_ns
    cond_off = (ts - t_off) >= keep_ns
    # At the end of each run (the raw value changes on the next row) the firing value
    # is either fixed (on-run that reached `for`: True; off-run that reached `keep`:
    # False) or carried through. Forward-fill the last fixed value into later runs.
    run_end = np.zeros(series.shape[0], dtype=np.bool_)
    run_end[:-1] = (raw[1:] != raw[:-1]) & ~seg.starts[1:]
    fixed = run_end & np.where(raw, cond_on, cond_off)
    shifted = np.zeros_like(fixed)
    shifted[1:] = fixed[:-1]
    shifted[seg.starts] = False
    i_fix, has_fix = ffill_index(shifted, seg)
    carry = np.where(has_fix, raw[np.maximum(i_fix - 1, 0)], firing[series])
    fire = np.where(raw, carry | cond_on, carry & ~cond_off)
    prev_fire = previous(fire, firing, series, seg)
    changed = np.flatnonzero(fire != prev_fire)
    if "last_change" in state.arrays and changed.shape[0]:
        cs = series[changed]
        final = np.ones(cs.shape[0], dtype=np.bool_)
        final[:-1] = cs[1:] != cs[:-1]
        state["last_change"][cs[final]] = ts[changed[final]]
    last = seg.end_idx
    s_last = series[last]
    raw_on[s_last] = raw[last]
    on_since[s_last] = t_on[last]
    off_since[s_last] = t_off[last]
    firing[s_last] = fire[last]
    return changed, fire[changed]


def _latched(state: SeriesState, rule: Any, series: I64, ts: I64, value: F64, set_ev: B,
             reset_ev: B, seg: Segments) -> Transitions:
    rows, fire = latch(state, series, ts, set_ev, reset_ev, seg, rule.for_ns,
                       rule.keep_firing_for_ns)
    return Transitions(rows, fire, ts[rows], value[rows])


# ---------------------------------------------------------------- late readings

LATE_FIELDS: dict[str, tuple[Any, Any, int]] = {
    "last_change": (np.int64, I64_MIN, 0),  # time of the series' last transition
    "late_on": (np.bool_, False, 0),  # hysteresis of the late readings judged so far
    "late_t": (np.int64, I64_MIN, 0),  # time of the last late reading judged
}


def late_onsets(state: SeriesState, series: I64, ts: I64, value: F64, set_ev: B,
                reset_ev: B) -> Transitions:
    """Late readings that start an episode the live evaluation missed.

    Rows: late readings (each older than its series' last evaluated reading), sorted by
    series and time. The firing state at a late reading's time is known only when it
    is after the series' last transition: it is the current one. Such a reading, while
    the series is not firing and newer than the late readings judged before, goes
    through a hysteresis of its own (``late_on``, ``late_t``; reset by any later live
    transition) and fires a late finding where that turns on. The rule's own state
    (latch, EWMA, windows) is only read.
    """
    lc = state["last_change"][series]
    lt = state["late_t"][series]
    ok = ~state["firing"][series] & (ts > np.maximum(lc, lt))
    if not ok.any():
        return empty_transitions()
    sub = np.flatnonzero(ok)
    s, se, re_ = series[sub], set_ev[sub], reset_ev[sub]
    seg = Segments.of(s)
    init = state["late_on"][s] & (lt[sub] > lc[sub])
    last_ev, has_ev = ffill_index(se | re_, seg)
    raw = np.where(has_ev, se[last_ev], init)
    prev = np.empty_like(raw)
    prev[1:] = raw[:-1]
    prev[seg.start_idx] = init[seg.start_idx]
    on = sub[np.flatnonzero(raw & ~prev)]
    ends = seg.end_idx
    state["late_on"][s[ends]] = raw[ends]
    state["late_t"][s[ends]] = ts[sub[ends]]
    return Transitions(on, np.ones(on.shape[0], dtype=np.bool_), ts[on], value[on])


# ---------------------------------------------------------------- threshold

THRESHOLD_FIELDS = {**LATCH_FIELDS, **LATE_FIELDS}


def threshold_limits(rule: ThresholdRule) -> tuple[bool, float, float]:
    """(upward, limit, clear) of a threshold rule."""
    if rule.above is not None:
        return True, rule.above, rule.clear if rule.clear is not None else rule.above
    assert rule.below is not None
    return False, rule.below, rule.clear if rule.clear is not None else rule.below


def threshold_events(rule: ThresholdRule, series: I64, value: F64, limit: F64, clear: F64
                     ) -> tuple[B, B]:
    """(set, reset) of each row; ``limit``/``clear``: per-series arrays."""
    lim, clr = limit[series], clear[series]
    if rule.above is not None:
        return value >= lim, value < clr
    return value <= lim, value > clr


def threshold_kernel(rule: ThresholdRule, state: SeriesState, series: I64, ts: I64,
                     value: F64, limit: F64, clear: F64) -> Transitions:
    """``limit``/``clear``: per-series arrays (device overrides applied)."""
    seg = Segments.of(series)
    set_ev, reset_ev = threshold_events(rule, series, value, limit, clear)
    return _latched(state, rule, series, ts, value, set_ev, reset_ev, seg)


def threshold_late(rule: ThresholdRule, state: SeriesState, series: I64, ts: I64,
                   value: F64, limit: F64, clear: F64) -> Transitions:
    """Late findings of late rows (see :func:`late_onsets`)."""
    set_ev, reset_ev = threshold_events(rule, series, value, limit, clear)
    return late_onsets(state, series, ts, value, set_ev, reset_ev)


# ---------------------------------------------------------------- rate

PREV_FIELDS: dict[str, tuple[Any, Any, int]] = {
    "seen": (np.bool_, False, 0),
    "last_t": (np.int64, 0, 0),
    "last_v": (np.float64, 0.0, 0),
}
def _prev_reading(state: SeriesState, series: I64, ts: I64, value: F64, seg: Segments
                  ) -> tuple[B, I64, F64]:
    has = np.ones(series.shape[0], dtype=np.bool_)
    has[seg.start_idx] = state["seen"][series[seg.start_idx]]
    pt = previous(ts, state["last_t"], series, seg)
    pv = previous(value, state["last_v"], series, seg)
    last = series[seg.end_idx]
    state["seen"][last] = True
    state["last_t"][last] = ts[seg.end_idx]
    state["last_v"][last] = value[seg.end_idx]
    return has, pt, pv


def rate_fields(rule: RateRule) -> dict[str, tuple[Any, Any, int]]:
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
    return _latched(state, rule, series, ts, shown, set_ev, reset_ev, seg)


# ---------------------------------------------------------------- flatline

FLATLINE_FIELDS = {**LATCH_FIELDS, **PREV_FIELDS,
                   "run_t": (np.int64, 0, 0), "run_v": (np.float64, 0.0, 0)}


def flatline_kernel(rule: FlatlineRule, state: SeriesState, series: I64, ts: I64,
                    value: F64) -> Transitions:
    """Runs of unchanged values (within tolerance) lasting ``window`` fire."""
    seg = Segments.of(series)
    has, _, pv = _prev_reading(state, series, ts, value, seg)
    if rule.relative_tolerance:
        tol = np.maximum(rule.tolerance, rule.relative_tolerance * np.abs(pv))
        brk = ~has | (np.abs(value - pv) > tol)
    else:
        brk = ~has | (np.abs(value - pv) > rule.tolerance)
    i_brk, has_brk = ffill_index(brk, seg)
    run_t = np.where(has_brk, ts[i_brk], state["run_t"][series])
    run_v = np.where(has_brk, value[i_brk], state["run_v"][series])
    set_ev = (ts - run_t) >= rule.window_ns
    if set_ev.any():
        run_tol = np.maximum(rule.tolerance, rule.relative_tolerance * np.abs(run_v))
        set_ev &= np.abs(value - run_v) <= run_tol
    last = series[seg.end_idx]
    state["run_t"][last] = run_t[seg.end_idx]
    state["run_v"][last] = run_v[seg.end_idx]
    return _latched(state, rule, series, ts, value, set_ev, ~set_ev, seg)


# ---------------------------------------------------------------- zscore


def decay(x: F64) -> F64:
    """``0.5 ** x`` elementwise (shared by kernel and reference for identical floats)."""
    return np.power(0.5, x)


def zscore_alpha(rule: ZscoreRule) -> float | None:
    """EWMA weight per sample when ``halflife`` is a sample count, else None."""
    if isinstance(rule.halflife, int):
        return float(1.0 - decay(np.array([1.0 / rule.halflife]))[0])
    return None


def full_row_median(buf: F64) -> F64:
    """Median of each row of ``buf`` (no NaN); numpy's SIMD sort beats partition here."""
    w = buf.shape[1]
    lo, hi = (w - 1) // 2, w // 2
    srt = np.sort(buf, axis=1)
    out: F64 = (srt[:, lo] + srt[:, hi]) / 2.0
    return out


def row_median(buf: F64, count: I64) -> F64:
    """Median of the first ``count`` non-NaN values of each row (NaN marks empty slots)."""
    srt = np.sort(buf, axis=1)  # NaN sorts last
    rows = np.arange(buf.shape[0])
    lo = srt[rows, np.maximum((count - 1) // 2, 0)]
    hi = srt[rows, np.maximum(count // 2, 0)]
    out: F64 = (lo + hi) / 2.0
    return out


def zscore_fields(rule: ZscoreRule) -> dict[str, tuple[Any, Any, int]]:
    """State of a zscore rule (robust: a ring buffer of ``window`` values per series)."""
    fields = {**LATCH_FIELDS, **LATE_FIELDS, "count": (np.int64, 0, 0),
              "last_t": (np.int64, 0, 0)}
    if rule.robust:
        fields["buf"] = (np.float64, np.nan, rule.window)
    else:
        fields["mean"] = (np.float64, 0.0, 0)
        fields["var"] = (np.float64, 0.0, 0)
    return fields


def zscore_kernel(rule: ZscoreRule, state: SeriesState, series: I64, ts: I64,
                  value: F64) -> Transitions:
    """z of each reading against the state before it, then the state is updated.

    The recurrence runs one vectorised step per reading rank within the batch (all
    series' first rows, then all second rows, ...), so cost grows with the longest
    run of one series in the batch, not with the number of series.
    """
    n = series.shape[0]
    seg = Segments.of(series)
    rank = np.arange(n, dtype=np.int64) - seg.first
    order = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[order], np.arange(int(rank.max()) + 2))
    zs = np.full(n, np.nan)
    count, last_t = state["count"], state["last_t"]
    alpha = zscore_alpha(rule)
    hl_ns = 0 if isinstance(rule.halflife, int) else parse_duration_ns(rule.halflife)
    for k in range(bounds.shape[0] - 1):
        rows = order[bounds[k]:bounds[k + 1]]
        s, x, t = series[rows], value[rows], ts[rows]
        c = count[s]
        if rule.robust:
            buf = state["buf"]
            w = rule.window
            full = c >= w
            if full.any():
                zs[rows[full]] = robust_z(rule, buf[s[full]], x[full])
            buf[s, c % w] = x
        else:
            mean, var = state["mean"], state["var"]
            m, v = mean[s], var[s]
            if alpha is None:
                gap = (t - last_t[s]).astype(np.float64)
                a = 1.0 - decay(gap / float(hl_ns))
            else:
                a = np.full(s.shape[0], alpha)
            d = x - m
            zs[rows] = ewma_z(rule, c, v, d)
            first = c == 0
            incr = a * d
            mean[s] = np.where(first, x, m + incr)
            var[s] = np.where(first, 0.0, (1.0 - a) * (v + d * incr))
        count[s] = c + 1
        last_t[s] = t
    return _z_transitions(rule, state, series, ts, value, zs, seg)


def robust_z(rule: ZscoreRule, b: F64, x: F64) -> F64:
    """z of ``x`` against the median and MAD of each row of the full window ``b``."""
    med = full_row_median(b)
    dev = np.abs(b - med[:, None])
    mad = full_row_median(dev) * 1.4826
    meanad = dev.mean(axis=1) * 1.2533
    scale = np.maximum(np.where(mad > 0, mad, meanad), rule.min_std)
    z: F64 = np.where(scale > 0, (x - med) / np.where(scale > 0, scale, 1.0), np.nan)
    return z


def ewma_z(rule: ZscoreRule, count: I64, var: F64, d: F64) -> F64:
    """z of deviations ``d`` from the EWMA mean (NaN before ``min_samples`` or at no spread)."""
    std = np.maximum(np.sqrt(var), rule.min_std)
    z: F64 = np.where((count >= rule.min_samples) & (std > 0),
                      d / np.where(std > 0, std, 1.0), np.nan)
    return z


def z_events(rule: ZscoreRule, zs: F64) -> tuple[B, B]:
    """(set, reset) of each z (NaN: neither)."""
    known = ~np.isnan(zs)
    zz = np.where(known, zs, 0.0)
    clear = rule.clear_z
    if rule.direction == "up":
        set_ev, reset_ev = zz >= rule.z, zz < clear
    elif rule.direction == "down":
        set_ev, reset_ev = zz <= -rule.z, zz > -clear
    else:
        set_ev, reset_ev = np.abs(zz) >= rule.z, np.abs(zz) < clear
    return known & set_ev, known & reset_ev


def _z_transitions(rule: ZscoreRule, state: SeriesState, series: I64, ts: I64, value: F64,
                   zs: F64, seg: Segments) -> Transitions:
    set_ev, reset_ev = z_events(rule, zs)
    return _latched(state, rule, series, ts, value, set_ev, reset_ev, seg)


def zscore_late(rule: ZscoreRule, state: SeriesState, series: I64, ts: I64,
                value: F64) -> Transitions:
    """Late findings of late rows: z against the series' current history, unchanged."""
    count = state["count"][series]
    if rule.robust:
        zs = np.full(series.shape[0], np.nan)
        full = count >= rule.window
        if full.any():
            zs[full] = robust_z(rule, state["buf"][series[full]], value[full])
    else:
        zs = ewma_z(rule, count, state["var"][series], value - state["mean"][series])
    set_ev, reset_ev = z_events(rule, zs)
    return late_onsets(state, series, ts, value, set_ev, reset_ev)


# ---------------------------------------------------------------- stale

STALE_FIELDS: dict[str, tuple[Any, Any, int]] = {
    "seen": (np.bool_, False, 0),
    "last_t": (np.int64, 0, 0),
    "last_v": (np.float64, 0.0, 0),
    "firing": (np.bool_, False, 0),
}


def stale_kernel(rule: StaleRule, state: SeriesState, series: I64, ts: I64,
                 value: F64) -> Transitions:
    """A gap of ``after`` between readings fires at ``previous + after`` and the reading
    that ends the gap resolves it (also when a tick fired it)."""
    seg = Segments.of(series)
    n = series.shape[0]
    has = np.ones(n, dtype=np.bool_)
    has[seg.start_idx] = state["seen"][series[seg.start_idx]]
    pt = previous(ts, state["last_t"], series, seg)
    pv = previous(value, state["last_v"], series, seg)
    was_firing = np.zeros(n, dtype=np.bool_)
    was_firing[seg.start_idx] = state["firing"][series[seg.start_idx]]
    gap = has & ~was_firing & ((ts - pt) >= rule.after_ns)
    # a gap gives (fire at pt + after, resolve now); a tick-fired series resolves now
    fire_rows = np.flatnonzero(gap)
    res_rows = np.flatnonzero(gap | was_firing)
    rows = np.concatenate([fire_rows, res_rows])
    fire = np.concatenate([np.ones(fire_rows.shape[0], np.bool_),
                           np.zeros(res_rows.shape[0], np.bool_)])
    t_out = np.concatenate([pt[fire_rows] + rule.after_ns, ts[res_rows]])
    v_out = np.concatenate([pv[fire_rows], value[res_rows]])
    order = np.lexsort((~fire, rows))
    last = series[seg.end_idx]
    state["seen"][last] = True
    state["last_t"][last] = ts[seg.end_idx]
    state["last_v"][last] = value[seg.end_idx]
    state["firing"][last] = False
    return Transitions(rows[order], fire[order], t_out[order], v_out[order])


def stale_tick(rule: StaleRule, state: SeriesState, applies: B, now_ns: int) -> Transitions:
    """Series (returned as ``rows``) silent for ``after`` at ``now_ns`` fire."""
    size = min(state.size, applies.shape[0])
    due = (applies[:size] & state["seen"][:size] & ~state["firing"][:size]
           & (now_ns - state["last_t"][:size] >= rule.after_ns))
    sids = np.flatnonzero(due).astype(np.int64)
    state["firing"][sids] = True
    return Transitions(sids, np.ones(sids.shape[0], np.bool_),
                       state["last_t"][sids] + rule.after_ns, state["last_v"][sids])


# ---------------------------------------------------------------- mnf


@lru_cache(maxsize=100_000)
def utc_offset_ns(tz: str, utc_day: int) -> int:
    """UTC offset of ``tz`` at noon UTC of ``utc_day`` (days since the epoch)."""
    at = dt.datetime.fromtimestamp(utc_day * 86400 + 43200, dt.UTC)
    offset = at.astimezone(zoneinfo.ZoneInfo(tz)).utcoffset()
    assert offset is not None
    return int(offset.total_seconds()) * 1_000_000_000


def local_ns(ts: I64, tz: str) -> I64:
    """Local wall-clock time of each ``ts`` (ns since the local epoch)."""
    days = ts // DAY_NS
    uniq, inv = np.unique(days, return_inverse=True)
    offsets = np.array([utc_offset_ns(tz, int(d)) for d in uniq], dtype=np.int64)
    out: I64 = ts + offsets[inv.reshape(-1)]
    return out


def mnf_fields(rule: MnfRule) -> dict[str, tuple[Any, Any, int]]:
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
    return _latched(state, rule, series, ts, shown, set_ev, reset_ev, seg)
