"""What the numpy kernels of the kinds share: state arrays, segments, the anti-flap latch.

Every kernel (one per kind, in :mod:`rules.kinds`) takes rows sorted by (series,
time), each newer than everything before it in its series (the engine sets late
readings apart), and returns the transitions as ``Transitions``. Per-series state
lives in a ``SeriesState`` indexed by series id and is updated in place, so that
feeding a batch equals feeding its readings one at a time (proven against
:mod:`rules.reference`). Late readings of kinds that judge them (``threshold``,
``zscore``) go through :func:`late_onsets`, which reads the rule state and never
writes it.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.model import DAY_NS, RuleBase

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
Arr = npt.NDArray[Any]
I64_MIN = np.iinfo(np.int64).min
FieldSpec = tuple[Any, Any, int | tuple[int, ...]]
"""A state field: (dtype, initial value, width or shape of one series' entry; 0: scalar)."""

LATCH_FIELDS: dict[str, FieldSpec] = {
    "raw_on": (np.bool_, False, 0),
    "on_since": (np.int64, 0, 0),
    "off_since": (np.int64, 0, 0),
    "firing": (np.bool_, False, 0),
}


class SeriesState:
    """Named per-series arrays (first axis: series id), grown as series appear."""

    def __init__(self, fields: dict[str, FieldSpec], n: int = 0) -> None:
        self.fields = fields
        self.arrays: dict[str, Arr] = {}
        self.size = 0
        for name, (dtype, fill, width) in fields.items():
            self.arrays[name] = np.full(_shape(n, width), fill, dtype=dtype)
        self.size = n

    def __getitem__(self, name: str) -> Arr:
        return self.arrays[name]

    def grow(self, n: int) -> None:
        """Make room for at least ``n`` series (new rows hold the initial values)."""
        if n <= self.size:
            return
        new = max(n, self.size * 2, 64)
        for name, (dtype, fill, width) in self.fields.items():
            shape = _shape(new - self.size, width)
            self.arrays[name] = np.concatenate([self.arrays[name], np.full(shape, fill, dtype)])
        self.size = new

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays."""
        return sum(a.nbytes for a in self.arrays.values())


@lru_cache(maxsize=1)
def lfilter() -> Any:
    """``scipy.signal.lfilter``, imported on first use: scipy costs seconds of start-up,
    and only long runs of one series (a backfill) need the compiled filter."""
    from scipy.signal import lfilter as compiled  # noqa: PLC0415

    return compiled


def _shape(n: int, width: int | tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(width, tuple):
        return (n, *width)
    return (n, width) if width else (n,)


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
    series: I64 | None = None
    """The series of each transition when it is not that of its row (``multivariate``
    reports on the device's anchor series)."""
    detail: list[str] | None = None
    """Text for each transition's :attr:`~rules.model.Finding.detail`, if any."""


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


def latched(state: SeriesState, rule: RuleBase, series: I64, ts: I64, value: F64, set_ev: B,
            reset_ev: B, seg: Segments) -> Transitions:
    """:func:`latch` with the rule's ``for``/``keep_firing_for``, as transitions."""
    rows, fire = latch(state, series, ts, set_ev, reset_ev, seg, rule.for_ns,
                       rule.keep_firing_for_ns)
    return Transitions(rows, fire, ts[rows], value[rows])


# ---------------------------------------------------------------- late readings

LATE_FIELDS: dict[str, FieldSpec] = {
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


# ---------------------------------------------------------------- previous reading

PREV_FIELDS: dict[str, FieldSpec] = {
    "seen": (np.bool_, False, 0),
    "last_t": (np.int64, 0, 0),
    "last_v": (np.float64, 0.0, 0),
}


def prev_reading(state: SeriesState, series: I64, ts: I64, value: F64, seg: Segments
                 ) -> tuple[B, I64, F64]:
    """(has a previous reading, its time, its value) of each row; the state (``PREV_FIELDS``)
    takes each series' last row."""
    has = np.ones(series.shape[0], dtype=np.bool_)
    has[seg.start_idx] = state["seen"][series[seg.start_idx]]
    pt = previous(ts, state["last_t"], series, seg)
    pv = previous(value, state["last_v"], series, seg)
    last = series[seg.end_idx]
    state["seen"][last] = True
    state["last_t"][last] = ts[seg.end_idx]
    state["last_v"][last] = value[seg.end_idx]
    return has, pt, pv


# ---------------------------------------------------------------- linear recurrences


def affine_scan(a: F64, b: F64, seg: Segments) -> F64:
    """``y[i] = a[i] * y[i-1] + b[i]`` within each segment, ``y = 0`` before its first row
    (``a`` of a segment's first row is ignored; a series' state ``y0`` enters as
    ``b[first] += a[first] * y0``).

    Segments whose ``a`` is one constant after their first row run through
    ``scipy.signal.lfilter`` (compiled and sequential: the loop's own arithmetic,
    ``b + a * y``); the others as a parallel prefix over the affine maps (log2 of the
    longest segment numpy passes, each value rounded a little differently).
    """
    n = b.shape[0]
    if n == 0:
        return b.copy()
    starts, ends = seg.start_idx, seg.end_idx
    if starts.shape[0] <= _LFILTER_SEGMENTS:
        y = np.empty(n)
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            y[lo] = b[lo]
            if hi == lo:
                continue
            a0 = float(a[lo + 1])
            if not bool(np.all(a[lo + 2:hi + 1] == a0)):
                y[lo:hi + 1] = _doubling(a[lo:hi + 1], b[lo:hi + 1])
                continue
            out, _ = lfilter()([1.0], [1.0, -a0], b[lo + 1:hi + 1], zi=[a0 * y[lo]])
            y[lo + 1:hi + 1] = out
        return y
    m = a.copy()
    m[starts] = 0.0  # nothing flows in from the previous segment
    return _doubling(m, b, int((ends - starts).max()) + 1)


_LFILTER_SEGMENTS = 8  # at most this many segments: one compiled filter call each


def _doubling(a: F64, b: F64, longest: int | None = None) -> F64:
    """Hillis–Steele prefix of the maps ``y -> a * y + b`` (``a[0]`` ignored)."""
    y = b.copy()
    m = a.copy()
    m[0] = 0.0
    step, longest = 1, b.shape[0] if longest is None else longest
    while step < longest:
        y[step:] += m[step:] * y[:-step]  # compose with the map ``step`` rows earlier
        m[step:] *= m[:-step]
        step *= 2
    return y


def ewma_mean_var(x: F64, alpha: F64, seg: Segments, mean0: F64, var0: F64, fresh: B
                  ) -> tuple[F64, F64, F64, F64, F64]:
    """EWMA mean and variance of each segment (one series each) from the series' state.

    Per row, as a one-reading-at-a-time loop does it: ``d = x - mean``, then
    ``mean += alpha * d`` and ``var = (1 - alpha) * (var + d * (alpha * d))``; a
    ``fresh`` series (no reading yet) starts at ``mean = x, var = 0``. ``mean0``,
    ``var0``, ``fresh``: the state of each row's series (read on segment starts).
    Returns per row (mean before it, its deviation ``d``, variance before it, mean
    after it, variance after it), equal to the loop's to rounding (the filters of
    :func:`affine_scan`). The mean is filtered relative to the series' stored mean (a
    fresh series': its first value), so a series that stays at its mean has exactly
    zero deviation and variance, as in the loop (z undefined, not rounding noise).
    """
    n = x.shape[0]
    starts = seg.start_idx
    first = np.zeros(n, dtype=np.bool_)
    first[starts] = fresh[starts]
    lengths = seg.end_idx - starts + 1
    anchor = np.repeat(np.where(first, x, mean0)[starts], lengths)
    keep = 1.0 - alpha
    keep0 = np.where(first, 0.0, keep)
    mean_after = anchor + affine_scan(keep0, np.where(first, 0.0, alpha * (x - anchor)), seg)
    mean_before = np.empty(n)
    mean_before[1:] = mean_after[:-1]
    mean_before[starts] = anchor[starts]
    d = x - mean_before
    var_in = keep0 * (d * (alpha * d))
    ds, ks = d[starts], keep[starts]
    var_in[starts] = np.where(first[starts], 0.0, ks * (var0[starts] + ds * (alpha[starts] * ds)))
    var_after = affine_scan(keep0, var_in, seg)
    var_before = np.empty(n)
    var_before[1:] = var_after[:-1]
    var_before[starts] = np.where(first[starts], 0.0, var0[starts])
    return mean_before, d, var_before, mean_after, var_after




# ---------------------------------------------------------------- helpers


def row_median(buf: F64, count: I64) -> F64:
    """Median of the first ``count`` non-NaN values of each row (NaN marks empty slots)."""
    srt = np.sort(buf, axis=1)  # NaN sorts last
    rows = np.arange(buf.shape[0])
    lo = srt[rows, np.maximum((count - 1) // 2, 0)]
    hi = srt[rows, np.maximum(count // 2, 0)]
    out: F64 = (lo + hi) / 2.0
    return out


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
