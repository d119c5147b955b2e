"""Rules (one frozen pydantic model per kind) and the findings they produce."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_NS = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_UNIT_NS["d"] = 24 * _UNIT_NS["h"]
DAY_NS = _UNIT_NS["d"]
MAX_DURATION_NS = 3650 * DAY_NS


def parse_duration_ns(value: object) -> int:
    """``"30s"``, ``"5m"``, ``"1h"``, ``"7d"``, ``"250ms"`` or seconds as a number → ns."""
    if isinstance(value, bool):
        raise ValueError("a duration is a string like '30s' or a number of seconds")
    if isinstance(value, int | float):
        if not value >= 0:
            raise ValueError("a duration cannot be negative")
        if value * 1_000_000_000 > MAX_DURATION_NS:
            raise ValueError("a duration must be at most 3650 days")
        return int(value * 1_000_000_000)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            ns = int(float(match.group(1)) * _UNIT_NS[match.group(2)])
            if ns > MAX_DURATION_NS:
                raise ValueError("a duration must be at most 3650 days")
            return ns
    raise ValueError(f"invalid duration {str(value)[:40]!r}: use e.g. '30s', '5m', '1h', '7d'")


DurationNs = Annotated[int, BeforeValidator(parse_duration_ns)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class Severity(StrEnum):
    """Severity of a rule's findings, lowest first."""

    INFO = "info"
    WARNING = "warning"
    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for info up to 4 for critical."""
        return list(Severity).index(self)


class RuleBase(BaseModel):
    """Fields every kind shares: identity, what it applies to, anti-flap timers."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    description: str = Field(default="", max_length=2000)
    device_types: tuple[str, ...] = ()
    metric: str = Field(default="*", min_length=1, max_length=100)
    severity: Severity = Severity.WARNING
    for_ns: DurationNs = Field(default=0, alias="for")
    keep_firing_for_ns: DurationNs = Field(default=0, alias="keep_firing_for")


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


RATE_LOOKBACK = 16
"""How many readings back a rate looks for its reference reading at most."""


class RateRule(RuleBase):
    """Fire when the change of a value, per ``per``, reaches a limit.

    The change is measured from the *reference reading*: the latest reading at
    least ``min_span`` (default ``per``) older, looking back at most
    ``RATE_LOOKBACK`` readings (a series reporting faster uses the reading that many
    back). No rate spans a gap between consecutive readings longer than ``window``;
    without a rate the state is left as it is. ``clear`` (same unit, default the
    limit) is the hysteresis: resolve only when the rate is back below it.
    ``spike_filter`` (default on): the change is measured from the reference reading
    or one of the ``spike_readings`` readings before it, whichever gives the smallest
    change, so an excursion of up to ``spike_readings`` readings and its return are
    not a rise and a drop.
    """

    kind: Literal["rate"]
    metric: str = Field(min_length=1, max_length=100)
    max_rise: Finite | None = Field(default=None, gt=0)
    max_drop: Finite | None = Field(default=None, gt=0)
    clear: Finite | None = Field(default=None, ge=0)
    per_ns: DurationNs = Field(default=60_000_000_000, alias="per", gt=0)
    window_ns: DurationNs = Field(default=900_000_000_000, alias="window", gt=0)
    min_span_ns: DurationNs | None = Field(default=None, alias="min_span")
    spike_filter: bool = True
    spike_readings: int = Field(default=2, ge=1, le=8)

    @model_validator(mode="after")
    def _check(self) -> RateRule:
        if (self.max_rise is None) == (self.max_drop is None):
            raise ValueError("a rate rule needs exactly one of 'max_rise' or 'max_drop'")
        limit = self.max_rise if self.max_rise is not None else self.max_drop
        if self.clear is not None and limit is not None and self.clear > limit:
            raise ValueError("'clear' must be <= the limit (hysteresis)")
        return self

    @property
    def span_ns(self) -> int:
        """Minimum time between a reading and its reference reading."""
        return self.per_ns if self.min_span_ns is None else self.min_span_ns

    @property
    def depth(self) -> int:
        """Readings before the reference reading the spike filter also considers."""
        return self.spike_readings if self.spike_filter else 0


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


class MnfRule(RuleBase):
    """Minimum night flow: the minimum of each night's ``window`` (local time) against
    the median of the last ``baseline_days`` nights; fire when it exceeds that baseline
    by the fraction ``increase`` and by at least ``min_increase`` (metric units)."""

    kind: Literal["mnf"]
    metric: str = Field(min_length=1, max_length=100)
    window: str = "02:00-04:00"
    baseline_days: int = Field(default=7, ge=2, le=60)
    min_days: int = Field(default=3, ge=1, le=60)
    increase: Finite = Field(default=0.3, gt=0, le=100)
    min_increase: Finite = Field(default=0.0, ge=0)
    clear: Finite | None = Field(default=None, ge=0)

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        parse_window(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> MnfRule:
        if self.min_days > self.baseline_days:
            raise ValueError("'min_days' must be <= 'baseline_days'")
        if self.clear is not None and self.clear > self.increase:
            raise ValueError("'clear' must be <= 'increase' (hysteresis)")
        return self

    @property
    def window_ns(self) -> tuple[int, int]:
        """Start and end of the nightly window, ns after local midnight."""
        return parse_window(self.window)


class CompositeRule(RuleBase):
    """Combine other rules' findings on the same device or the same grid.

    ``all``: every listed rule fired within ``within`` of each other. ``any``: at least
    ``min_count`` firings of the listed rules within ``within``. Resolves when none of
    the listed rules is firing any more in that scope.
    """

    kind: Literal["composite"]
    all: tuple[str, ...] = ()
    any: tuple[str, ...] = ()
    scope: Literal["device", "grid"] = "device"
    within_ns: DurationNs = Field(default=600_000_000_000, alias="within", gt=0)
    min_count: int = Field(default=1, ge=1, le=10_000)

    @model_validator(mode="after")
    def _check(self) -> CompositeRule:
        if bool(self.all) == bool(self.any):
            raise ValueError("a composite rule needs exactly one of 'all' or 'any' (non-empty)")
        if self.for_ns or self.keep_firing_for_ns:
            raise ValueError("'for' and 'keep_firing_for' do not apply to composite rules")
        if self.all and self.min_count != 1:
            raise ValueError("'min_count' applies only to 'any'")
        return self

    @property
    def components(self) -> tuple[str, ...]:
        """The rule ids this composite combines."""
        return self.all or self.any


def parse_window(text: str) -> tuple[int, int]:
    """``"02:00-04:00"`` → (start, end) in ns after midnight; start < end."""
    match = re.fullmatch(r"\s*(\d\d):(\d\d)\s*-\s*(\d\d):(\d\d)\s*", text)
    if not match:
        raise ValueError(f"invalid window {text[:40]!r}: use 'HH:MM-HH:MM', e.g. '02:00-04:00'")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"invalid window {text!r}: hours 00-24, minutes 00-59")
    start, end = (h1 * 60 + m1) * 60_000_000_000, (h2 * 60 + m2) * 60_000_000_000
    if start >= end:
        raise ValueError(f"invalid window {text!r}: start must be before end, same day")
    return start, end


Rule = ThresholdRule | RateRule | ZscoreRule | FlatlineRule | StaleRule | MnfRule | CompositeRule
ReadingRule = ThresholdRule | RateRule | ZscoreRule | FlatlineRule | MnfRule
RULE_ADAPTER: TypeAdapter[Any] = TypeAdapter(Annotated[Rule, Field(discriminator="kind")])


def rule_fingerprint(rule: Rule) -> str:
    """A stable text of everything that defines ``rule`` (unchanged rules keep state)."""
    return rule.model_dump_json()


class FindingState(StrEnum):
    """A finding is a transition."""

    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule's transition for one series at one time."""

    rule_id: str
    device_id: str
    metric: str
    state: FindingState
    severity: Severity
    ts_ns: int
    value: float
    late: bool = False
    """A late reading (older than its series' last evaluated one) met the firing
    condition: an episode that is already over, never a live transition."""


class Readings(Protocol):
    """Columns of readings the engine evaluates (ingest's ``Batch`` is one)."""

    @property
    def series(self) -> npt.NDArray[np.int64]:
        """Series id of each row."""
        ...

    @property
    def ts_ns(self) -> npt.NDArray[np.int64]:
        """Time of each row, ns since the epoch."""
        ...

    @property
    def value(self) -> npt.NDArray[np.float64]:
        """Value of each row."""
        ...
