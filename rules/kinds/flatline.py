"""``flatline``: a value that has not moved for ``window`` (stuck sensor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from rules.kernels import (
    LATCH_FIELDS,
    PREV_FIELDS,
    FieldSpec,
    Segments,
    SeriesState,
    Transitions,
    ffill_index,
    latched,
    prev_reading,
)
from rules.kinds.base import F64, I64, Env, Latch, Out, RefEnv, RuleKind
from rules.model import DurationNs, Finite, RuleBase


class FlatlineRule(RuleBase):
    """Fire when a value has not moved for ``window`` (stuck sensor).

    Two consecutive readings count as unchanged when they differ by at most
    ``max(tolerance, relative_tolerance × |previous|)``; the run must also stay
    within that tolerance of its first value.
    """

    kind: Literal["flatline"]
    metric: str = Field(min_length=1, max_length=100)
    window_ns: DurationNs = Field(default=6 * 3_600_000_000_000, alias="window", gt=0)
    tolerance: Finite = Field(default=0.0, ge=0)
    relative_tolerance: Finite = Field(default=1e-6, ge=0, le=0.5)


FLATLINE_FIELDS: dict[str, FieldSpec] = {**LATCH_FIELDS, **PREV_FIELDS,
                   "run_t": (np.int64, 0, 0), "run_v": (np.float64, 0.0, 0)}


def flatline_kernel(rule: FlatlineRule, state: SeriesState, series: I64, ts: I64,
                    value: F64) -> Transitions:
    """Runs of unchanged values (within tolerance) lasting ``window`` fire."""
    seg = Segments.of(series)
    has, _, pv = prev_reading(state, series, ts, value, seg)
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
    return latched(state, rule, series, ts, value, set_ev, ~set_ev, seg)



# ---------------------------------------------------------------- reference


@dataclass
class FlatlineRef:
    """Reference state of one series: the latch, the last reading, the run."""

    latch: Latch = field(default_factory=Latch)
    seen: bool = False
    last_t: int = 0
    last_v: float = 0.0
    run_t: int = 0
    run_v: float = 0.0


def flatline_step(rule: FlatlineRule, st: FlatlineRef, t: int, v: float) -> list[Out]:
    """Unchanged (within tolerance) since the run started, for ``window``."""
    tol = max(rule.tolerance, rule.relative_tolerance * abs(st.last_v))
    if not st.seen or abs(v - st.last_v) > tol:
        st.run_t, st.run_v = t, v
    st.seen, st.last_t, st.last_v = True, t, v
    run_tol = max(rule.tolerance, rule.relative_tolerance * abs(st.run_v))
    flat = t - st.run_t >= rule.window_ns and abs(v - st.run_v) <= run_tol
    return st.latch.step(rule, t, flat, not flat, v)



class FlatlineKind(RuleKind[FlatlineRule]):
    """``flatline``: NaN readings are dropped; a sensor-health kind."""

    name = "flatline"
    model = FlatlineRule
    health = True

    def state_fields(self, rule: FlatlineRule) -> dict[str, FieldSpec]:
        """Latch, the previous reading, the current run."""
        return FLATLINE_FIELDS

    def kernel(self, rule: FlatlineRule, env: Env, series: I64, ts: I64, value: F64
               ) -> Transitions:
        """See :func:`flatline_kernel`."""
        return flatline_kernel(rule, env.state, series, ts, value)

    def ref_state(self, rule: FlatlineRule) -> Any:
        """A fresh :class:`FlatlineRef`."""
        return FlatlineRef()

    def ref_step(self, rule: FlatlineRule, st: Any, t: int, v: float, env: RefEnv
                 ) -> list[Out]:
        """See :func:`flatline_step`."""
        return flatline_step(rule, st, t, v)


KIND = FlatlineKind()
