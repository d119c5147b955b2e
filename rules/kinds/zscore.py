"""``zscore``: a value ``z`` standard deviations from the series' own history."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from common.duration import Duration
from rules.filters import Groups
from rules.kernels import (
    LATCH_FIELDS,
    LATE_FIELDS,
    FieldSpec,
    Segments,
    SeriesState,
    Transitions,
    ewma_mean_var,
    latched,
    late_onsets,
    previous,
)
from rules.kinds.base import (
    F64,
    I64,
    B,
    Env,
    LateJudged,
    Out,
    RefEnv,
    RuleKind,
    late_onset,
    median,
)
from rules.likelihood import (
    LIKELIHOOD_FIELDS,
    LikelihoodRef,
    likelihood_events,
    likelihood_kernel,
    likelihood_step,
    z_anomaly_score,
)
from rules.model import Finite, RuleBase


class ZscoreRule(RuleBase):
    """Fire when a value is ``z`` standard deviations away from the series' own history.

    Default: EWMA mean and variance with ``halflife`` (a duration such as ``"1h"`` or
    a number of samples). ``robust = true``: median and MAD of the last ``window``
    samples instead. Evaluated only after ``min_samples`` readings (robust: a full window).
    """

    kind: Literal["zscore"]
    metric: str = Field(min_length=1, max_length=100)
    z: Finite = Field(default=5.0, gt=0, le=1000)
    clear: Finite | None = Field(default=None, ge=0)
    halflife: int | Duration = 50
    min_samples: int = Field(default=30, ge=2, le=1_000_000)
    robust: bool = False
    window: int = Field(default=60, ge=5, le=1000)
    direction: Literal["both", "up", "down"] = "both"
    min_std: Finite = Field(default=0.0, ge=0)
    likelihood: Finite | None = Field(default=None, gt=0.5, lt=1.0)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without ``likelihood`` the dump (and so the fingerprint) is as before it existed."""
        data: dict[str, Any] = handler(self)
        if self.likelihood is None:
            data.pop("likelihood", None)
        return data

    @field_validator("halflife", mode="before")
    @classmethod
    def _halflife(cls, v: object) -> int | Duration:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError("halflife is a number of samples or a duration like '1h'")
        if isinstance(v, int):
            if not 1 <= v <= 1_000_000:
                raise ValueError("halflife in samples must be between 1 and 1000000")
            return v
        halflife = Duration(v)
        if halflife.ns <= 0:
            raise ValueError("halflife must be > 0")
        return halflife

    @model_validator(mode="after")
    def _check(self) -> ZscoreRule:
        if self.clear is not None and self.clear > self.z:
            raise ValueError("'clear' must be <= 'z' (hysteresis)")
        return self

    @property
    def clear_z(self) -> float:
        """The |z| below which a firing series resolves (default 0.75 × ``z``)."""
        return self.clear if self.clear is not None else 0.75 * self.z


def decay(x: F64) -> F64:
    """``0.5 ** x`` elementwise (shared by kernel and reference for identical floats)."""
    return np.power(0.5, x)


def zscore_alpha(rule: ZscoreRule) -> float | None:
    """EWMA weight per sample when ``halflife`` is a sample count, else None."""
    if isinstance(rule.halflife, int):
        return float(1.0 - decay(np.array([1.0 / rule.halflife]))[0])
    return None


def halflife_ns(rule: ZscoreRule) -> int:
    """The half-life in ns when it is a duration, else 0 (a sample count)."""
    return 0 if isinstance(rule.halflife, int) else rule.halflife.ns


def zscore_fields(rule: ZscoreRule) -> dict[str, FieldSpec]:
    """State of a zscore rule (robust: a ring buffer of ``window`` values per series)."""
    fields = {**LATCH_FIELDS, **LATE_FIELDS, "count": (np.int64, 0, 0),
              "last_t": (np.int64, 0, 0)}
    if rule.robust:
        fields["buf"] = (np.float64, np.nan, rule.window)
    else:
        fields["mean"] = (np.float64, 0.0, 0)
        fields["var"] = (np.float64, 0.0, 0)
    if rule.likelihood is not None:
        fields.update(LIKELIHOOD_FIELDS)
    return fields


def zscore_kernel(rule: ZscoreRule, state: SeriesState, series: I64, ts: I64,
                  value: F64) -> Transitions:
    """z of each reading against the state before it, then the state is updated.

    Batches of many series with few rows each (the service) run one vectorised step
    per reading rank (:func:`zscore_loop`: the reference's arithmetic exactly). A batch
    holding a long run of one series (backfill, backtest) runs whole series at once:
    EWMA mean and variance through compiled filters (:func:`rules.kernels.ewma_mean_var`;
    equal to the reference to rounding), the robust window of each reading gathered
    from the ring buffer and the batch (exact). Infinite values take the loop (EWMA).
    """
    seg = Segments.of(series)
    heads = series[seg.start_idx]
    if int((seg.end_idx - seg.start_idx).max()) < _LONG:  # many series, few rows each
        return zscore_loop(rule, state, series, ts, value, seg)
    if rule.robust:
        zs = _robust_batch(rule, state, series, value, seg)
    else:
        if not (np.isfinite(value).all() and np.isfinite(state["mean"][heads]).all()
                and np.isfinite(state["var"][heads]).all()):  # inf would leak across series
            return zscore_loop(rule, state, series, ts, value, seg)
        zs = _ewma_batch(rule, state, series, ts, value, seg)
    last = seg.end_idx
    state["count"][heads] += last - seg.start_idx + 1
    state["last_t"][heads] = ts[last]
    return _z_transitions(rule, state, series, ts, value, zs, seg)


_LONG = 64  # a series with this many rows in the batch: whole-series path
_GATHER = 2_000_000  # window cells gathered at a time (robust)


def _ewma_batch(rule: ZscoreRule, state: SeriesState, series: I64, ts: I64, value: F64,
                seg: Segments) -> F64:
    """z of each row against the EWMA before it; the mean and variance state move on."""
    count, mean, var = state["count"], state["mean"], state["var"]
    alpha = zscore_alpha(rule)
    if alpha is None:
        gap = (ts - previous(ts, state["last_t"], series, seg)).astype(np.float64)
        a = 1.0 - decay(gap / float(halflife_ns(rule)))
    else:
        a = np.full(series.shape[0], alpha)
    c = count[series] + (seg.rows - seg.first)
    _, d, var_before, mean_after, var_after = ewma_mean_var(
        value, a, seg, mean[series], var[series], c == 0)
    last, heads = seg.end_idx, series[seg.end_idx]
    mean[heads] = mean_after[last]
    var[heads] = var_after[last]
    return ewma_z(rule, c, var_before, d)


def _robust_batch(rule: ZscoreRule, state: SeriesState, series: I64, value: F64,
                  seg: Segments) -> F64:
    """z of each row against the median/MAD of the ``window`` values before it; the
    ring buffer takes the rows.

    Each series' ring (oldest first) is laid before its rows, so a row's window is a
    slice of that sequence; :func:`robust_z` gets it with the roll that puts it back in
    the ring's slot order (which the mean absolute deviation is summed in).
    """
    w = rule.window
    buf = state["buf"]
    heads = series[seg.start_idx]
    n_heads = heads.shape[0]
    g = np.repeat(np.arange(n_heads), seg.end_idx - seg.start_idx + 1)  # segment of each row
    rank = seg.rows - seg.first
    c0 = state["count"][heads]
    c = c0[g] + rank
    zs = np.full(series.shape[0], np.nan)
    judged = np.flatnonzero(c >= w)
    if judged.shape[0]:
        seq = np.empty(n_heads * w + series.shape[0])  # per series: its ring, its rows
        k = np.arange(w)
        ring_at = (seg.start_idx + np.arange(n_heads) * w)[:, None] + k
        seq[ring_at] = buf[heads[:, None], (c0[:, None] - w + k) % w]
        seq[seg.rows + (g + 1) * w] = value
        windows = np.lib.stride_tricks.sliding_window_view(seq, w)
        step = max(1, _GATHER // w)
        for lo in range(0, judged.shape[0], step):
            rows = judged[lo:lo + step]
            zs[rows] = robust_z(rule, windows[rows + g[rows] * w], value[rows], c[rows] % w)
    n_seg = seg.end_idx - seg.start_idx + 1
    tail = np.flatnonzero(rank >= (n_seg - w)[g])  # the rows the ring keeps
    buf[series[tail], c[tail] % w] = value[tail]
    return zs


def zscore_loop(rule: ZscoreRule, state: SeriesState, series: I64, ts: I64, value: F64,
                seg: Segments) -> Transitions:
    """The kernel as one vectorised step per reading rank (all series' first rows, then
    all second rows, ...): the reference's arithmetic exactly; cost grows with the
    longest run of one series in the batch, not with the number of series."""
    n = series.shape[0]
    rank = np.arange(n, dtype=np.int64) - seg.first
    order = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[order], np.arange(int(rank.max()) + 2))
    zs = np.full(n, np.nan)
    count, last_t = state["count"], state["last_t"]
    alpha = zscore_alpha(rule)
    hl_ns = halflife_ns(rule)
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


def robust_z(rule: ZscoreRule, b: F64, x: F64, roll: I64 | None = None) -> F64:
    """z of ``x`` against the median and MAD of each row of the full window ``b``.

    ``b``: each row in the ring buffer's slot order, or (with ``roll``) oldest first,
    slot ``j`` holding column ``(j - roll) % window``. Median and MAD do not depend
    on the order; the mean absolute deviation (the scale where the MAD is 0) is summed
    in slot order, as the reference sums it, and only for those rows.
    """
    med = full_row_median(b)
    dev = np.abs(b - med[:, None])
    scale = full_row_median(dev) * 1.4826
    flat = np.flatnonzero(~(scale > 0))
    if flat.shape[0]:
        ring = dev[flat]
        if roll is not None:
            w = b.shape[1]
            ring = np.take_along_axis(ring, (np.arange(w) - roll[flat][:, None]) % w, axis=1)
        scale[flat] = ring.mean(axis=1) * 1.2533
    scale = np.maximum(scale, rule.min_std)
    z: F64 = np.where(scale > 0, (x - med) / np.where(scale > 0, scale, 1.0), np.nan)
    return z


def full_row_median(buf: F64) -> F64:
    """Median of each row of ``buf`` (no NaN); numpy's SIMD sort beats partition here."""
    w = buf.shape[1]
    lo, hi = (w - 1) // 2, w // 2
    srt = np.sort(buf, axis=1)
    out: F64 = (srt[:, lo] + srt[:, hi]) / 2.0
    return out


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
    if rule.likelihood is not None:
        x = likelihood_kernel(state, z_anomaly_score(zs, rule.direction),
                              Groups.of(seg.start_idx, series.shape[0]),
                              series[seg.start_idx])
        set_ev, reset_ev = likelihood_events(x, rule.likelihood)
    else:
        set_ev, reset_ev = z_events(rule, zs)
    return latched(state, rule, series, ts, value, set_ev, reset_ev, seg)


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



# ---------------------------------------------------------------- reference


@dataclass
class ZscoreRef(LateJudged):
    """Reference state of one series: latch, late hysteresis, EWMA or window."""

    count: int = 0
    last_t: int = 0
    mean: float = 0.0
    var: float = 0.0
    buf: list[float] = field(default_factory=list)
    lk: LikelihoodRef = field(default_factory=LikelihoodRef)


def z_of(rule: ZscoreRule, st: ZscoreRef, v: float) -> float | None:
    """z of ``v`` against the series' history as it is (None: not judged yet)."""
    if rule.robust:
        if st.count < rule.window:
            return None
        med = median(st.buf)
        devs = [abs(b - med) for b in st.buf]
        mad = median(devs) * 1.4826
        meanad = float(np.array(devs).mean()) * 1.2533
        scale = max(mad if mad > 0 else meanad, rule.min_std)
        return (v - med) / scale if scale > 0 else None
    std = max(math.sqrt(st.var), rule.min_std)
    if st.count >= rule.min_samples and std > 0:
        return (v - st.mean) / std
    return None


def ref_z_events(rule: ZscoreRule, z: float | None) -> tuple[bool, bool]:
    """(set, reset) of one z."""
    if z is None:
        return False, False
    c = rule.clear_z
    if rule.direction == "up":
        return z >= rule.z, z < c
    if rule.direction == "down":
        return z <= -rule.z, z > -c
    return abs(z) >= rule.z, abs(z) < c


def zscore_step(rule: ZscoreRule, st: ZscoreRef, t: int, v: float) -> list[Out]:
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
            hl = float(halflife_ns(rule))
            alpha = 1.0 - float(decay(np.array([float(t - st.last_t) / hl]))[0])
        d = v - st.mean
        if st.count == 0:
            st.mean, st.var = v, 0.0
        else:
            incr = alpha * d
            st.mean, st.var = st.mean + incr, (1.0 - alpha) * (st.var + d * incr)
    st.count += 1
    st.last_t = t
    if rule.likelihood is not None:
        score = None if z is None else float(
            z_anomaly_score(np.array([z]), rule.direction)[0])
        set_, reset = likelihood_step(st.lk, score, rule.likelihood)
    else:
        set_, reset = ref_z_events(rule, z)
    return st.latch.step(rule, t, set_, reset, v)


def zscore_late_step(rule: ZscoreRule, st: ZscoreRef, t: int, v: float) -> list[Out]:
    """A late reading: z against the history as it is, through the late hysteresis."""
    return late_onset(st, t, v, lambda: ref_z_events(rule, z_of(rule, st, v)))


class ZscoreKind(RuleKind[ZscoreRule]):
    """``zscore``: NaN readings are dropped; judges late readings."""

    name = "zscore"
    model = ZscoreRule

    def state_fields(self, rule: ZscoreRule) -> dict[str, FieldSpec]:
        """See :func:`zscore_fields`."""
        return zscore_fields(rule)

    def kernel(self, rule: ZscoreRule, env: Env, series: I64, ts: I64, value: F64
               ) -> Transitions:
        """See :func:`zscore_kernel`."""
        return zscore_kernel(rule, env.state, series, ts, value)

    def judges_late(self, rule: ZscoreRule) -> bool:
        """Without ``for`` (nor ``likelihood``): a late reading is judged against the
        history as it is."""
        return not rule.for_ns and rule.likelihood is None

    def late(self, rule: ZscoreRule, env: Env, series: I64, ts: I64, value: F64
             ) -> Transitions:
        """See :func:`zscore_late`."""
        return zscore_late(rule, env.state, series, ts, value)

    def ref_state(self, rule: ZscoreRule) -> Any:
        """A fresh :class:`ZscoreRef`."""
        return ZscoreRef()

    def ref_step(self, rule: ZscoreRule, st: Any, t: int, v: float, env: RefEnv
                 ) -> list[Out]:
        """See :func:`zscore_step`."""
        return zscore_step(rule, st, t, v)

    def ref_late(self, rule: ZscoreRule, st: Any, t: int, v: float, env: RefEnv
                 ) -> list[Out]:
        """See :func:`zscore_late_step`."""
        return zscore_late_step(rule, st, t, v)


KIND = ZscoreKind()
