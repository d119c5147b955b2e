"""``zscore``: a value ``z`` standard deviations from the series' own history."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from rules.kernels import (
    LATCH_FIELDS,
    LATE_FIELDS,
    FieldSpec,
    Segments,
    SeriesState,
    Transitions,
    latched,
    late_onsets,
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
from rules.model import Finite, RuleBase, parse_duration_ns


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
    halflife: int | str = 50
    min_samples: int = Field(default=30, ge=2, le=1_000_000)
    robust: bool = False
    window: int = Field(default=60, ge=5, le=1000)
    direction: Literal["both", "up", "down"] = "both"
    min_std: Finite = Field(default=0.0, ge=0)

    @field_validator("halflife")
    @classmethod
    def _halflife(cls, v: int | str) -> int | str:
        if isinstance(v, bool):
            raise ValueError("halflife is a number of samples or a duration like '1h'")
        if isinstance(v, int):
            if not 1 <= v <= 1_000_000:
                raise ValueError("halflife in samples must be between 1 and 1000000")
        elif parse_duration_ns(v) <= 0:
            raise ValueError("halflife must be > 0")
        return v

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


def full_row_median(buf: F64) -> F64:
    """Median of each row of ``buf`` (no NaN); numpy's SIMD sort beats partition here."""
    w = buf.shape[1]
    lo, hi = (w - 1) // 2, w // 2
    srt = np.sort(buf, axis=1)
    out: F64 = (srt[:, lo] + srt[:, hi]) / 2.0
    return out


def zscore_fields(rule: ZscoreRule) -> dict[str, FieldSpec]:
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
        """Without ``for``: a late reading is judged against the history as it is."""
        return not rule.for_ns

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
