"""Sequential recurrences of the statistical kinds, over groups of rows, bit for bit
equal to stepping them one reading at a time.

The rows of one *group* (a series, or a series' seasonal slot) are contiguous and in
time order. Short groups (the service: many series, a few readings each per batch)
advance one vectorised step per rank within the group; long groups (a backfill) run
as a compiled filter (``scipy.signal.lfilter`` for the EWMA; cumulative sums and
running minima for CUSUM). Both do the same IEEE operations as the plain-Python
steps (:func:`ewma_step`, :func:`cusum_step`), so the equivalence tests hold exactly.

Shared by ``seasonal``, ``changepoint`` and the anomaly likelihood
(:mod:`rules.likelihood`); any kind may use them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from rules.kernels import lfilter

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

LONG = 256
"""Groups with more rows than this in one batch run as compiled filters."""
CUSUM_CHUNK = 4096
"""Rows per closed-form CUSUM pass (re-started after each alarm)."""
Q = 65536.0
"""CUSUM increments are integers in units of 1/Q sigma (exact sums in any order)."""


def ewma_alpha(halflife: float) -> float:
    """Weight of each new observation for a half-life of ``halflife`` observations."""
    return float(1.0 - 0.5 ** (1.0 / halflife))


@lru_cache(maxsize=1024)
def warm_count(a: float) -> int:
    """The first count ``n`` from which the warm-up weight ``max(a, 1/(n+1))`` is ``a``."""
    n = max(0, math.ceil(1.0 / a) - 3)
    while n > 0 and max(a, 1.0 / n) == a:
        n -= 1
    while max(a, 1.0 / (n + 1.0)) != a:
        n += 1
    return n


def ewma_step(a: float, y: float, n: int, x: float) -> float:
    """One EWMA step: ``y`` after ``n`` observations takes ``x``.

    The weight is ``max(a, 1/(n+1))`` — the plain mean while it is larger, so the
    first observation is the start value and early ones are not dominated by it.
    """
    w = max(a, 1.0 / (n + 1.0))
    return w * x + (1.0 - w) * y


@dataclass(frozen=True, slots=True)
class Groups:
    """Contiguous groups of rows: each row's group and rank in it, and the rows in rank
    order (``order[bounds[k]:bounds[k + 1]]``: every group's ``k``-th row)."""

    start: I64
    length: I64
    gid: I64
    rank: I64
    order: I64
    bounds: I64

    @classmethod
    def of(cls, start: I64, n_rows: int) -> Groups:
        """Groups starting at ``start`` (sorted) over ``n_rows`` rows."""
        length = np.diff(np.append(start, n_rows))
        gid = np.repeat(np.arange(start.shape[0]), length)
        rank = np.arange(n_rows, dtype=np.int64) - start[gid]
        top = int(length.max()) if length.shape[0] else 0
        key = rank.astype(np.uint16) if top <= 1 << 16 else rank
        order = np.argsort(key, kind="stable")  # radix sort for 16-bit keys
        bounds = np.searchsorted(rank[order], np.arange(top + 1))
        return cls(start, length, gid, rank, order, bounds)

    def long(self) -> B:
        """Groups that run as compiled filters."""
        out: B = self.length > LONG
        return out

    def steps(self, stepped: B | None) -> Iterator[I64]:
        """Rows of each rank in turn (only ``stepped`` rows, if given)."""
        if stepped is None:
            for k in range(self.bounds.shape[0] - 1):
                yield self.order[self.bounds[k]:self.bounds[k + 1]]
            return
        idx = np.flatnonzero(stepped)
        if not idx.shape[0]:
            return
        r = self.rank[idx]
        order = idx[np.argsort(r, kind="stable")]
        bounds = np.searchsorted(self.rank[order], np.arange(int(r.max()) + 2))
        for k in range(bounds.shape[0] - 1):
            yield order[bounds[k]:bounds[k + 1]]


def grouped_ewma(x: F64, groups: Groups, y0: F64, n: I64, a: float) -> tuple[F64, F64]:
    """EWMA (:func:`ewma_step`) of each group of ``x``.

    ``x`` and ``n`` (each row's observation count before it, nondecreasing within a
    group) have one row per row, optionally several columns (independent channels);
    ``y0``: each group's value before the batch (one row per group, same columns).
    Returns (each row's EWMA *before* the row, each group's EWMA after its last row).
    """
    y = y0.astype(np.float64, copy=True)
    before = np.empty_like(x, dtype=np.float64)
    nw = warm_count(a)
    long_g = groups.long()
    any_long = bool(long_g.any())
    warm: B = n < nw if n.ndim == 1 else np.asarray((n < nw).any(axis=1))
    stepped: B | None = ~long_g[groups.gid] | warm if any_long else None
    w_all = np.maximum(a, 1.0 / (n + 1.0))
    v_all = 1.0 - w_all
    wx = w_all * x
    for rows in groups.steps(stepped):
        g = groups.gid[rows]
        yp = y[g]
        before[rows] = yp
        y[g] = wx[rows] + v_all[rows] * yp
    if any_long:
        c = 1.0 - a
        b_coef, a_coef = np.array([a]), np.array([1.0, -c])
        for gi in np.flatnonzero(long_g).tolist():
            start = int(groups.start[gi])
            e = start + int(groups.length[gi])
            s = e - int(np.count_nonzero(~warm[start:e]))
            if s >= e:
                continue
            seq = x[s:e]
            out, _ = lfilter()(b_coef, a_coef, seq, axis=0, zi=(c * y[gi])[None, ...])
            before[s] = y[gi]
            before[s + 1:e] = out[:-1]
            y[gi] = out[-1]
    return before, y


def chained_ewma(x: F64, groups: Groups, y0: F64, z0: F64, n: I64, a: float
                 ) -> tuple[F64, F64, F64, F64] | None:
    """Two chained EWMAs in one pass of rank steps: ``y`` of ``x`` (counts ``n``) and
    ``z`` of ``|x - y before|`` (counts ``n - 1``, from the second row of a group on),
    as two :func:`grouped_ewma` calls would give them; None when some group is long
    (then make those two calls). Returns (y before, y after, z before, z after)."""
    if groups.long().any():
        return None
    y = y0.astype(np.float64, copy=True)
    z = z0.astype(np.float64, copy=True)
    yb = np.empty_like(x)
    zb = np.empty_like(x)
    wy = np.maximum(a, 1.0 / (n + 1.0))
    wz = np.maximum(a, 1.0 / (np.maximum(n - 1, 0) + 1.0))
    later = n >= 1
    for rows in groups.steps(None):
        g = groups.gid[rows]
        yp, zp, xr = y[g], z[g], x[rows]
        yb[rows] = yp
        zb[rows] = zp
        w, v = wy[rows], wz[rows]
        y[g] = w * xr + (1.0 - w) * yp
        d = np.where(later[rows], np.abs(xr - yp), 0.0)
        z[g] = v * d + (1.0 - v) * zp
    return yb, y, zb, z


def cusum_step(s: int, q: int, h: int) -> tuple[int, int, bool]:
    """One CUSUM step: ``v = max(0, s + q)``; at ``h`` or more an alarm, and the sum
    re-arms at 0. Returns (new sum, ``v``, alarm)."""
    v = max(0, s + q)
    return (0, v, True) if v >= h else (v, v, False)


def grouped_cusum(q: I64, groups: Groups, s0: I64, h: int) -> tuple[B, I64, I64]:
    """CUSUM (:func:`cusum_step`) of integer increments ``q`` per group (optionally
    several columns: independent sums).

    Returns (alarm at each row, each row's sum before a re-arm, each group's sum after
    its last row). Long groups use the closed form ``S_t = D_t - min(0, min_{s<=t} D_s)``
    (``D``: start sum plus the cumulative sum), restarted after each alarm.
    """
    s = s0.astype(np.int64, copy=True)
    alarm = np.zeros(q.shape, dtype=np.bool_)
    vals = np.zeros(q.shape, dtype=np.int64)
    long_g = groups.long()
    any_long = bool(long_g.any())
    short_rows = np.flatnonzero(~long_g[groups.gid]) if any_long else None
    if q.ndim == 1:
        _cusum_short(q, groups, s, h, alarm, vals, short_rows)
    else:
        for col in range(q.shape[1]):  # one contiguous column at a time: faster
            qc, sc = np.ascontiguousarray(q[:, col]), np.ascontiguousarray(s[:, col])
            ac, vc = np.zeros(q.shape[0], dtype=np.bool_), np.zeros(q.shape[0], dtype=np.int64)
            _cusum_short(qc, groups, sc, h, ac, vc, short_rows)
            s[:, col], alarm[:, col], vals[:, col] = sc, ac, vc
    if not any_long:
        return alarm, vals, s
    cols = q.reshape(q.shape[0], -1)
    al2, va2, s2 = alarm.reshape(cols.shape), vals.reshape(cols.shape), s.reshape(
        s.shape[0], -1)
    for g in np.flatnonzero(long_g).tolist():
        for col in range(cols.shape[1]):
            start = int(groups.start[g])
            e = start + int(groups.length[g])
            s2[g, col] = _cusum_run(cols[start:e, col], int(s2[g, col]), h,
                                    al2[start:e, col], va2[start:e, col])
    return alarm, vals, s


BIG = 1 << 36
"""Offset between groups in :func:`_cusum_short` (above twice any partial sum of a
short group: at most ``LONG`` increments of at most ~2**27)."""


def _cusum_short(q: I64, groups: Groups, s: I64, h: int, alarm: B, vals: I64,
                 rows: I64 | None) -> None:
    """Closed-form CUSUM of the short groups (``rows``: theirs; None: all), all at once:
    per-group cumulative sums and running minima (groups kept apart by offsets of
    :data:`BIG`), repeated from the row after each group's first alarm."""
    todo = groups.rank if rows is None else rows  # (only its length is used when None)
    q2 = q.reshape(q.shape[0], -1)
    s2 = s.reshape(s.shape[0], -1)
    al2, va2 = alarm.reshape(q2.shape), vals.reshape(q2.shape)
    if not todo.shape[0]:
        return
    whole = rows is None  # every row: all groups, in order
    qt = q2 if whole else q2[todo]
    csum = np.cumsum(qt, axis=0)
    if whole:
        heads, length = groups.start, groups.length
        d = csum + np.repeat(np.take(qt - csum, heads, axis=0) + s2, length, axis=0)
        g = groups.gid
    else:
        g = groups.gid[todo]
        first = np.ones(todo.shape[0], dtype=np.bool_)
        first[1:] = g[1:] != g[:-1]
        heads = np.flatnonzero(first)
        length = np.diff(np.append(heads, todo.shape[0]))
        d = csum + np.repeat(np.take(qt - csum, heads, axis=0) + s2[g[heads]], length,
                             axis=0)
    off = (g * BIG)[:, None]
    runmin = np.minimum.accumulate(d - off, axis=0) + off
    st = d - np.minimum(runmin, 0)
    hit = st >= h
    any_alarm = bool(hit.any())
    if whole:
        va2[:] = st
        if any_alarm:
            al2[:] = hit
    else:
        va2[todo] = st
        al2[todo] = hit
    if not any_alarm:
        s2[g[heads + length - 1]] = np.take(st, heads + length - 1, axis=0)
        return
    # each group's sum after its last row, or 0 from its first alarm (the rows after
    # that are done again below, from 0)
    any_hit = np.logical_or.reduceat(hit, heads, axis=0)
    s2[g[heads + length - 1]] = np.where(any_hit, 0, np.take(st, heads + length - 1, axis=0))
    nh: I64 = np.cumsum(hit, axis=0) - hit
    after = nh > np.repeat(np.take(nh, heads, axis=0), length, axis=0)
    for col in range(q2.shape[1]):
        sub = np.flatnonzero(after[:, col]) if whole else todo[after[:, col]]
        if sub.shape[0]:
            _cusum_short(q2[:, col].copy(), groups, s2[:, col], h, al2[:, col],
                         va2[:, col], sub)


def _cusum_run(q: I64, cur: int, h: int, alarm: B, vals: I64) -> int:
    """Closed-form CUSUM of one long run (writes ``alarm``/``vals``); returns the sum."""
    i, e = 0, q.shape[0]
    chunk = CUSUM_CHUNK
    while i < e:
        j = min(e, i + chunk)
        d = cur + np.cumsum(q[i:j])
        st = d - np.minimum(np.minimum.accumulate(d), 0)
        hits = np.flatnonzero(st >= h)
        if hits.shape[0]:
            f = int(hits[0])
            alarm[i + f] = True
            vals[i:i + f + 1] = st[:f + 1]
            cur = 0
            i += f + 1
            chunk = max(CUSUM_CHUNK // 64, f * 2, 1)
        else:
            vals[i:j] = st
            cur = int(st[-1])
            i = j
            chunk = min(chunk * 2, 1 << 20)
    return cur


def subgroups(mask: B, gstart: I64) -> tuple[I64, I64, I64]:
    """The rows where ``mask`` holds, as groups: (row indices, index of each non-empty
    subgroup's first row among them, the original group of each subgroup)."""
    n_rows = mask.shape[0]
    glen = np.diff(np.append(gstart, n_rows))
    gid = np.repeat(np.arange(gstart.shape[0]), glen)
    idx = np.flatnonzero(mask)
    g = gid[idx]
    first = np.ones(idx.shape[0], dtype=np.bool_)
    first[1:] = g[1:] != g[:-1]
    starts = np.flatnonzero(first)
    return idx, starts, g[starts]
