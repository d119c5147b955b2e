"""``seasonal``: a value far from what its time-of-day (day-of-week) slot usually is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from rules.filters import Groups, chained_ewma, ewma_alpha, ewma_step, grouped_ewma
from rules.kernels import (
    LATCH_FIELDS,
    FieldSpec,
    Segments,
    SeriesState,
    Transitions,
    latched,
    local_ns,
)
from rules.kinds.base import F64, I64, Env, LateJudged, Out, RefEnv, RuleKind
from rules.likelihood import (
    LIKELIHOOD_FIELDS,
    LikelihoodRef,
    likelihood_events,
    likelihood_kernel,
    likelihood_step,
    ref_z_limit_events,
    z_anomaly_score,
    z_limit_events,
)
from rules.model import DAY_NS, DurationNs, Finite, RuleBase

SPREAD = 1.2533141373155001
"""sqrt(pi/2): standard deviation per mean absolute deviation of a normal residual."""
MAX_SLOTS = 10_080
REL_FLOOR = 1e-9
"""Floor of sigma relative to the baseline (rounding noise of a constant series)."""


class SeasonalRule(RuleBase):
    """Fire when a value is ``z`` robust standard deviations from its slot's baseline.

    The ``period`` (``"1d"``: time of day; ``"7d"``: time of week) is cut into slots of
    ``slot`` in local wall-clock time (``rules.timezone``). Each slot keeps an EWMA of
    its readings and of their absolute residuals (``halflife`` readings of that slot)
    and judges only after ``min_samples`` readings of its own.
    """

    kind: Literal["seasonal"]
    metric: str = Field(min_length=1, max_length=100)
    keep_firing_for_ns: DurationNs = Field(default=3600 * 10**9, alias="keep_firing_for")
    period: DurationNs = Field(default=DAY_NS)
    slot: DurationNs = Field(default=3600 * 10**9)
    z: Finite = Field(default=5.0, gt=0, le=1000)
    clear: Finite | None = Field(default=None, ge=0)
    halflife: int = Field(default=10, ge=1, le=100_000)
    min_samples: int = Field(default=5, ge=2, le=1_000_000)
    direction: Literal["both", "up", "down"] = "both"
    min_std: Finite = Field(default=0.0, ge=0)
    likelihood: Finite | None = Field(default=None, gt=0.5, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> SeasonalRule:
        if self.slot <= 0 or self.period <= 0:
            raise ValueError("'period' and 'slot' must be > 0")
        if self.period % self.slot:
            raise ValueError("'period' must be a whole number of 'slot's")
        if self.period // self.slot > MAX_SLOTS:
            raise ValueError(f"at most {MAX_SLOTS} slots per period")
        if self.period > 28 * DAY_NS:
            raise ValueError("'period' must be at most 28 days")
        if self.clear is not None and self.clear > self.z:
            raise ValueError("'clear' must be <= 'z' (hysteresis)")
        return self

    @property
    def slots(self) -> int:
        """Slots per period."""
        return self.period // self.slot

    @property
    def clear_z(self) -> float:
        """The |z| below which a firing series resolves (default 0.75 × ``z``)."""
        return self.clear if self.clear is not None else 0.75 * self.z


def slot_of(rule: SeasonalRule, ts: I64, tz: str) -> I64:
    """Slot of each time: local wall-clock time within the period, in slots."""
    out: I64 = (local_ns(ts, tz) % rule.period) // rule.slot
    return out


def seasonal_fields(rule: SeasonalRule) -> dict[str, FieldSpec]:
    """Per series and slot: readings seen, EWMA of the value and of |residual|."""
    fields = {**LATCH_FIELDS, "count": (np.int64, 0, rule.slots),
              "mean": (np.float64, 0.0, rule.slots), "spread": (np.float64, 0.0, rule.slots)}
    if rule.likelihood is not None:
        fields.update(LIKELIHOOD_FIELDS)
    return fields


def seasonal_kernel(rule: SeasonalRule, state: SeriesState, series: I64, ts: I64,
                    value: F64, tz: str) -> Transitions:
    """z of each reading against its slot before it; then the slot takes it in."""
    k = rule.slots
    key = series * k + slot_of(rule, ts, tz)
    order = np.argsort(key, kind="stable")
    xs, ks = value[order], key[order]
    gseg = Segments.of(ks)
    groups = Groups.of(gseg.start_idx, xs.shape[0])
    gk = ks[gseg.start_idx]
    count, mean, spread = (state["count"].reshape(-1), state["mean"].reshape(-1),
                           state["spread"].reshape(-1))
    a = ewma_alpha(rule.halflife)
    c0 = count[gk]
    n = c0[groups.gid] + groups.rank
    fused = chained_ewma(xs, groups, mean[gk], spread[gk], n, a)
    if fused is not None:
        mprev, mfin, sprev, sfin = fused
    else:
        mprev, mfin = grouped_ewma(xs, groups, mean[gk], n, a)
        dev = np.where(n >= 1, np.abs(xs - mprev), 0.0)
        sprev, sfin = grouped_ewma(dev, groups, spread[gk], np.maximum(n - 1, 0), a)
    mean[gk] = mfin
    spread[gk] = sfin
    count[gk] = c0 + groups.length
    sigma = np.maximum(np.maximum(SPREAD * sprev, rule.min_std), REL_FLOOR * np.abs(mprev))
    judged = (n >= rule.min_samples) & (sigma > 0)
    z_sorted = np.where(judged, (xs - mprev) / np.where(judged, sigma, 1.0), np.nan)
    zs = np.empty_like(z_sorted)
    zs[order] = z_sorted
    seg = Segments.of(series)
    if rule.likelihood is not None:
        score = z_anomaly_score(zs, rule.direction)
        lk = likelihood_kernel(state, score, Groups.of(seg.start_idx, series.shape[0]),
                               series[seg.start_idx])
        set_ev, reset_ev = likelihood_events(lk, rule.likelihood)
    else:
        set_ev, reset_ev = z_limit_events(zs, rule.z, rule.clear_z, rule.direction)
    return latched(state, rule, series, ts, value, set_ev, reset_ev, seg)


# ---------------------------------------------------------------- reference


@dataclass
class SeasonalRef(LateJudged):
    """Reference state of one series: latch and (count, mean, spread) per slot."""

    slots: dict[int, list[float]] = field(default_factory=dict)
    lk: LikelihoodRef = field(default_factory=LikelihoodRef)


def seasonal_step(rule: SeasonalRule, st: SeasonalRef, t: int, v: float, tz: str
                  ) -> list[Out]:
    """z against the reading's slot as it is; then the slot takes the reading in."""
    j = int(slot_of(rule, np.array([t], dtype=np.int64), tz)[0])
    n_f, m, s = st.slots.get(j, [0.0, 0.0, 0.0])
    n = int(n_f)
    a = ewma_alpha(rule.halflife)
    sigma = max(SPREAD * s, rule.min_std, REL_FLOOR * abs(m))
    z = (v - m) / sigma if n >= rule.min_samples and sigma > 0 else None
    if n >= 1:
        s = ewma_step(a, s, n - 1, abs(v - m))
    st.slots[j] = [float(n + 1), ewma_step(a, m, n, v), s]
    if rule.likelihood is not None:
        score = None if z is None else float(z_anomaly_score(np.array([z]), rule.direction)[0])
        set_, reset = likelihood_step(st.lk, score, rule.likelihood)
    else:
        set_, reset = ref_z_limit_events(z, rule.z, rule.clear_z, rule.direction)
    return st.latch.step(rule, t, set_, reset, v)


class SeasonalKind(RuleKind[SeasonalRule]):
    """``seasonal``: NaN readings are dropped; late readings are not judged."""

    name = "seasonal"
    model = SeasonalRule

    def state_fields(self, rule: SeasonalRule) -> dict[str, FieldSpec]:
        """See :func:`seasonal_fields`."""
        return seasonal_fields(rule)

    def kernel(self, rule: SeasonalRule, env: Env, series: I64, ts: I64, value: F64
               ) -> Transitions:
        """See :func:`seasonal_kernel`."""
        return seasonal_kernel(rule, env.state, series, ts, value, env.timezone)

    def ref_state(self, rule: SeasonalRule) -> Any:
        """A fresh :class:`SeasonalRef`."""
        return SeasonalRef()

    def ref_step(self, rule: SeasonalRule, st: Any, t: int, v: float, env: RefEnv
                 ) -> list[Out]:
        """See :func:`seasonal_step`."""
        return seasonal_step(rule, st, t, v, env.timezone)


KIND = SeasonalKind()
