"""``stale``: a series with no reading for ``after`` (evaluated by time too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from rules.kernels import FieldSpec, Segments, SeriesState, Transitions, previous
from rules.kinds.base import F64, I64, B, Env, Out, RefEnv, RuleKind
from rules.model import DurationNs, RuleBase


class StaleRule(RuleBase):
    """Fire when a series has had no reading for ``after``; the next reading resolves it."""

    kind: Literal["stale"]
    after_ns: DurationNs = Field(alias="after", gt=0)

    @model_validator(mode="after")
    def _check(self) -> StaleRule:
        if self.for_ns or self.keep_firing_for_ns:
            raise ValueError("'for' and 'keep_firing_for' do not apply to stale rules "
                             "(use 'after')")
        return self


STALE_FIELDS: dict[str, FieldSpec] = {
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



# ---------------------------------------------------------------- reference


@dataclass
class StaleRef:
    """Reference state of one series: the last reading and whether a gap is firing."""

    seen: bool = False
    last_t: int = 0
    last_v: float = 0.0
    stale_firing: bool = False


def stale_step(rule: StaleRule, st: StaleRef, t: int, v: float) -> list[Out]:
    """A gap of ``after`` fires at the gap's start + after and resolves now."""
    out: list[Out] = []
    if st.stale_firing:
        out.append((t, False, v))
    elif st.seen and t - st.last_t >= rule.after_ns:
        out += [(st.last_t + rule.after_ns, True, st.last_v), (t, False, v)]
    st.seen, st.last_t, st.last_v, st.stale_firing = True, t, v, False
    return out


def stale_ref_tick(rule: StaleRule, st: StaleRef, now: int) -> list[Out]:
    """Fire a silent series at ``last + after`` once ``now`` has passed it."""
    if st.seen and not st.stale_firing and now - st.last_t >= rule.after_ns:
        st.stale_firing = True
        return [(st.last_t + rule.after_ns, True, st.last_v)]
    return []



class StaleKind(RuleKind[StaleRule]):
    """``stale``: NaN readings count as readings; ticks; a sensor-health kind."""

    name = "stale"
    model = StaleRule
    reads_nan = True
    ticks = True
    health = True

    def state_fields(self, rule: StaleRule) -> dict[str, FieldSpec]:
        """The last reading and whether the series is firing."""
        return STALE_FIELDS

    def restored(self, rule: StaleRule, state: SeriesState, series: I64, now_ns: int) -> None:
        """Silence is measured from the service start: its downtime is not the devices'."""
        seen = state["seen"][series]
        last_t = state["last_t"]
        last_t[series[seen]] = np.maximum(last_t[series[seen]], now_ns)

    def kernel(self, rule: StaleRule, env: Env, series: I64, ts: I64, value: F64
               ) -> Transitions:
        """See :func:`stale_kernel`."""
        return stale_kernel(rule, env.state, series, ts, value)

    def tick(self, rule: StaleRule, env: Env, applies: B, now_ns: int) -> Transitions:
        """See :func:`stale_tick`."""
        return stale_tick(rule, env.state, applies, now_ns)

    def ref_state(self, rule: StaleRule) -> Any:
        """A fresh :class:`StaleRef`."""
        return StaleRef()

    def ref_step(self, rule: StaleRule, st: Any, t: int, v: float, env: RefEnv) -> list[Out]:
        """See :func:`stale_step`."""
        return stale_step(rule, st, t, v)

    def ref_tick(self, rule: StaleRule, st: Any, now_ns: int) -> list[Out]:
        """See :func:`stale_ref_tick`."""
        return stale_ref_tick(rule, st, now_ns)


KIND = StaleKind()
