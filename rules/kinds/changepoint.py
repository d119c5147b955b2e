"""``changepoint``: a lasting shift of a series' level (CUSUM in units of its own noise)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from rules.filters import (
    Groups,
    Q,
    chained_ewma,
    cusum_step,
    ewma_alpha,
    ewma_step,
    grouped_cusum,
    grouped_ewma,
)
from rules.kernels import (
    LATCH_FIELDS,
    FieldSpec,
    Segments,
    SeriesState,
    Transitions,
    latched,
    previous,
)
from rules.kinds.base import F64, I64, Env, LateJudged, Out, RefEnv, RuleKind
from rules.kinds.seasonal import REL_FLOOR
from rules.likelihood import (
    LIKELIHOOD_FIELDS,
    LikelihoodRef,
    likelihood_events,
    likelihood_kernel,
    likelihood_step,
)
from rules.model import DurationNs, Finite, RuleBase

NOISE = {"residual": math.sqrt(math.pi / 2.0), "diff": math.sqrt(math.pi) / 2.0}
"""Standard deviation per mean absolute residual / mean absolute difference of
consecutive readings (normal noise)."""


class ChangepointRule(RuleBase):
    """Fire when the series' level shifts: two-sided (or one ``direction``) CUSUM.

    Each reading's deviation from the baseline (EWMA, ``halflife`` readings) in units
    of the series' noise is clipped to ±``clip``, less the ``drift`` allowance ``k``, and
    summed (floored at 0); a sum reaching ``threshold`` ``h`` is an alarm and re-arms at
    0. The alert fires at an alarm and resolves once no alarm came for
    ``keep_firing_for`` (default 1h): while the shift is not yet absorbed into the
    baseline the sums keep alarming.
    """

    kind: Literal["changepoint"]
    metric: str = Field(min_length=1, max_length=100)
    keep_firing_for_ns: DurationNs = Field(default=3600 * 10**9, alias="keep_firing_for")
    drift: Finite = Field(default=0.5, ge=0, le=100)
    threshold: Finite = Field(default=10.0, gt=0, le=1000)
    clip: Finite = Field(default=4.0, gt=0, le=1000)
    halflife: int = Field(default=200, ge=1, le=1_000_000)
    min_samples: int = Field(default=30, ge=2, le=1_000_000)
    noise: Literal["residual", "diff"] = "residual"
    direction: Literal["both", "up", "down"] = "both"
    min_std: Finite = Field(default=0.0, ge=0)
    likelihood: Finite | None = Field(default=None, gt=0.5, lt=1.0)

    @property
    def h_units(self) -> int:
        """The threshold in CUSUM units (1/Q sigma)."""
        return max(1, round(self.threshold * Q))


def changepoint_fields(rule: ChangepointRule) -> dict[str, FieldSpec]:
    """Per series: readings seen, baseline, noise, last value, the two sums."""
    fields = {**LATCH_FIELDS, "count": (np.int64, 0, 0), "base": (np.float64, 0.0, 0),
              "spread": (np.float64, 0.0, 0), "last_v": (np.float64, 0.0, 0),
              "s_up": (np.int64, 0, 0), "s_down": (np.int64, 0, 0)}
    if rule.likelihood is not None:
        fields.update(LIKELIHOOD_FIELDS)
    return fields


def changepoint_kernel(rule: ChangepointRule, state: SeriesState, series: I64, ts: I64,
                       value: F64) -> Transitions:
    """Deviation of each reading from the state before it; then the state takes it in."""
    seg = Segments.of(series)
    groups = Groups.of(seg.start_idx, series.shape[0])
    heads = series[seg.start_idx]
    count, base, spread = state["count"], state["base"], state["spread"]
    c0 = count[heads]
    a = ewma_alpha(rule.halflife)
    n = c0[groups.gid] + groups.rank
    fused = (chained_ewma(value, groups, base[heads], spread[heads], n, a)
             if rule.noise == "residual" else None)
    if fused is not None:
        bprev, bfin, sprev, sfin = fused
    else:
        bprev, bfin = grouped_ewma(value, groups, base[heads], n, a)
        ref = bprev if rule.noise == "residual" else previous(value, state["last_v"], series,
                                                               seg)
        dev = np.where(n >= 1, np.abs(value - ref), 0.0)
        sprev, sfin = grouped_ewma(dev, groups, spread[heads], np.maximum(n - 1, 0), a)
    base[heads] = bfin
    spread[heads] = sfin
    count[heads] = c0 + groups.length
    state["last_v"][heads] = value[seg.end_idx]
    sigma = np.maximum(np.maximum(NOISE[rule.noise] * sprev, rule.min_std),
                       REL_FLOOR * np.abs(bprev))
    judged = (n >= rule.min_samples) & (sigma > 0)
    z = np.where(judged, (value - bprev) / np.where(judged, sigma, 1.0), 0.0)
    zc = np.clip(z, -rule.clip, rule.clip)
    h = rule.h_units
    alarm = np.zeros(series.shape[0], dtype=np.bool_)
    top = np.zeros(series.shape[0], dtype=np.int64)
    for name, sign in (("s_up", 1.0), ("s_down", -1.0)):
        if rule.direction == ("down" if sign > 0 else "up"):
            continue
        q = np.rint((sign * zc - rule.drift) * Q).astype(np.int64)
        q[~judged] = 0
        hit, vals, fin = grouped_cusum(q, groups, state[name][heads], h)
        state[name][heads] = fin
        alarm |= hit
        np.maximum(top, vals, out=top)
    if rule.likelihood is not None:
        score = np.where(judged, top / h, np.nan)
        x = likelihood_kernel(state, score, groups, heads)
        set_ev, reset_ev = likelihood_events(x, rule.likelihood)
    else:
        set_ev, reset_ev = alarm, judged & ~alarm
    return latched(state, rule, series, ts, value, set_ev, reset_ev, seg)


# ---------------------------------------------------------------- reference


@dataclass
class ChangepointRef(LateJudged):
    """Reference state of one series."""

    count: int = 0
    base: float = 0.0
    spread: float = 0.0
    last_v: float = 0.0
    s_up: int = 0
    s_down: int = 0
    lk: LikelihoodRef = field(default_factory=LikelihoodRef)


def changepoint_step(rule: ChangepointRule, st: ChangepointRef, t: int, v: float
                     ) -> list[Out]:
    """The sums take this reading's deviation from the baseline as it is; then the
    baseline and noise take the reading in."""
    n = st.count
    a = ewma_alpha(rule.halflife)
    sigma = max(NOISE[rule.noise] * st.spread, rule.min_std, REL_FLOOR * abs(st.base))
    judged = n >= rule.min_samples and sigma > 0
    alarm = False
    top = 0
    if judged:
        zc = min(max((v - st.base) / sigma, -rule.clip), rule.clip)
        h = rule.h_units
        if rule.direction != "down":
            st.s_up, vu, hit = cusum_step(st.s_up, round((zc - rule.drift) * Q), h)
            alarm, top = alarm or hit, max(top, vu)
        if rule.direction != "up":
            st.s_down, vd, hit = cusum_step(st.s_down, round((-zc - rule.drift) * Q), h)
            alarm, top = alarm or hit, max(top, vd)
    if n >= 1:
        ref = st.base if rule.noise == "residual" else st.last_v
        st.spread = ewma_step(a, st.spread, n - 1, abs(v - ref))
    st.base = ewma_step(a, st.base, n, v)
    st.last_v = v
    st.count = n + 1
    if rule.likelihood is not None:
        set_, reset = likelihood_step(st.lk, top / rule.h_units if judged else None,
                                      rule.likelihood)
    else:
        set_, reset = alarm, judged and not alarm
    return st.latch.step(rule, t, set_, reset, v)


class ChangepointKind(RuleKind[ChangepointRule]):
    """``changepoint``: NaN readings are dropped; late readings are not judged."""

    name = "changepoint"
    model = ChangepointRule

    def state_fields(self, rule: ChangepointRule) -> dict[str, FieldSpec]:
        """See :func:`changepoint_fields`."""
        return changepoint_fields(rule)

    def kernel(self, rule: ChangepointRule, env: Env, series: I64, ts: I64, value: F64
               ) -> Transitions:
        """See :func:`changepoint_kernel`."""
        return changepoint_kernel(rule, env.state, series, ts, value)

    def ref_state(self, rule: ChangepointRule) -> Any:
        """A fresh :class:`ChangepointRef`."""
        return ChangepointRef()

    def ref_step(self, rule: ChangepointRule, st: Any, t: int, v: float, env: RefEnv
                 ) -> list[Out]:
        """See :func:`changepoint_step`."""
        return changepoint_step(rule, st, t, v)


KIND = ChangepointKind()
