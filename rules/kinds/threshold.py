"""``threshold``: a value at or above (or at or below) a limit, with hysteresis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from devices.model import Device
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
from rules.kinds.base import F64, I64, Arr, B, Env, LateJudged, Out, RefEnv, RuleKind, late_onset
from rules.model import Finite, RuleBase


class ThresholdRule(RuleBase):
    """Fire when a value is at or above ``above`` (or at or below ``below``).

    ``limit`` names a device limit (``low_low``, ``low``, ``high``, ``high_high``):
    a device that carries that limit for the metric uses it instead of
    ``above``/``below`` (the hysteresis band keeps its width).
    """

    kind: Literal["threshold"] = "threshold"
    metric: str = Field(min_length=1, max_length=100)
    above: Finite | None = None
    below: Finite | None = None
    clear: Finite | None = None
    limit: Literal["low_low", "low", "high", "high_high"] | None = None

    @model_validator(mode="after")
    def _check_limits(self) -> ThresholdRule:
        if (self.above is None) == (self.below is None):
            raise ValueError("a threshold rule needs exactly one of 'above' or 'below'")
        if self.clear is not None:
            if self.above is not None and self.clear > self.above:
                raise ValueError("'clear' must be <= 'above' (hysteresis)")
            if self.below is not None and self.clear < self.below:
                raise ValueError("'clear' must be >= 'below' (hysteresis)")
        return self


THRESHOLD_FIELDS: dict[str, FieldSpec] = {**LATCH_FIELDS, **LATE_FIELDS}


def threshold_limits(rule: ThresholdRule) -> tuple[bool, float, float]:
    """(upward, limit, clear) of a threshold rule."""
    if rule.above is not None:
        return True, rule.above, rule.clear if rule.clear is not None else rule.above
    assert rule.below is not None
    return False, rule.below, rule.clear if rule.clear is not None else rule.below


def device_limits(rule: ThresholdRule, device: Device, metric: str) -> tuple[float, float]:
    """(limit, clear) of ``rule`` for one device: its own limit wins, band width kept."""
    _, limit, clear = threshold_limits(rule)
    if rule.limit is not None:
        own = device.limits.get(metric, {}).get(rule.limit)
        if own is not None:
            return float(own), float(own) + (clear - limit)
    return limit, clear


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
    return latched(state, rule, series, ts, value, set_ev, reset_ev, seg)


def threshold_late(rule: ThresholdRule, state: SeriesState, series: I64, ts: I64,
                   value: F64, limit: F64, clear: F64) -> Transitions:
    """Late findings of late rows (see :func:`rules.kernels.late_onsets`)."""
    set_ev, reset_ev = threshold_events(rule, series, value, limit, clear)
    return late_onsets(state, series, ts, value, set_ev, reset_ev)


# ---------------------------------------------------------------- reference


def _ref_events(rule: ThresholdRule, v: float, limit: float | None, clear: float | None
                ) -> tuple[bool, bool]:
    upward, lim, clr = threshold_limits(rule)
    lim = lim if limit is None else limit
    clr = clr if clear is None else clear
    return (v >= lim, v < clr) if upward else (v <= lim, v > clr)


def threshold_step(rule: ThresholdRule, st: LateJudged, t: int, v: float,
                   limit: float | None = None, clear: float | None = None) -> list[Out]:
    """Threshold with hysteresis (``limit``/``clear`` override the rule's own)."""
    set_, reset = _ref_events(rule, v, limit, clear)
    return st.latch.step(rule, t, set_, reset, v)


def threshold_late_step(rule: ThresholdRule, st: LateJudged, t: int, v: float,
                        limit: float | None = None, clear: float | None = None) -> list[Out]:
    """A late reading through the late hysteresis (see :func:`rules.kinds.base.late_onset`)."""
    return late_onset(st, t, v, lambda: _ref_events(rule, v, limit, clear))


def _ref_limits(rule: ThresholdRule, env: RefEnv) -> tuple[float | None, float | None]:
    if env.device is None:
        return None, None
    return device_limits(rule, env.device, env.metric)


class ThresholdKind(RuleKind[ThresholdRule]):
    """``threshold``: NaN readings neither set nor reset; judges late readings."""

    name = "threshold"
    model = ThresholdRule
    reads_nan = True

    def state_fields(self, rule: ThresholdRule) -> dict[str, FieldSpec]:
        """Latch and late hysteresis."""
        return THRESHOLD_FIELDS

    def series_params(self, rule: ThresholdRule, devices: Sequence[Device],
                      metrics: Sequence[str], start: int, stop: int) -> dict[str, Arr]:
        """``limit`` and ``clear`` of each series (a device's own limit applied)."""
        _, limit, clear = threshold_limits(rule)
        limits = np.full(stop - start, limit, dtype=np.float64)
        clears = np.full(stop - start, clear, dtype=np.float64)
        if rule.limit is not None:  # devices with limits of their own
            for i, sid in enumerate(range(start, stop)):
                if devices[sid].limits:
                    limits[i], clears[i] = device_limits(rule, devices[sid], metrics[sid])
        return {"limit": limits, "clear": clears}

    def kernel(self, rule: ThresholdRule, env: Env, series: I64, ts: I64, value: F64
               ) -> Transitions:
        """Set at the limit, reset past ``clear``, through the latch."""
        return threshold_kernel(rule, env.state, series, ts, value, env.params["limit"],
                                env.params["clear"])

    def judges_late(self, rule: ThresholdRule) -> bool:
        """Without ``for``: a late reading's own time is enough to judge it."""
        return not rule.for_ns

    def late(self, rule: ThresholdRule, env: Env, series: I64, ts: I64, value: F64
             ) -> Transitions:
        """Late onsets against the series' limits."""
        return threshold_late(rule, env.state, series, ts, value, env.params["limit"],
                              env.params["clear"])

    def ref_state(self, rule: ThresholdRule) -> Any:
        """Latch and late hysteresis."""
        return LateJudged()

    def ref_step(self, rule: ThresholdRule, st: Any, t: int, v: float, env: RefEnv
                 ) -> list[Out]:
        """One reading against the device's limits."""
        limit, clear = _ref_limits(rule, env)
        return threshold_step(rule, st, t, v, limit, clear)

    def ref_late(self, rule: ThresholdRule, st: Any, t: int, v: float, env: RefEnv
                 ) -> list[Out]:
        """One late reading against the device's limits."""
        limit, clear = _ref_limits(rule, env)
        return threshold_late_step(rule, st, t, v, limit, clear)


KIND = ThresholdKind()
