"""Rules and the findings they produce."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_NS = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_UNIT_NS["d"] = 24 * _UNIT_NS["h"]


def parse_duration_ns(value: object) -> int:
    """``"30s"``, ``"5m"``, ``"1h"``, ``"7d"``, ``"250ms"`` or seconds as a number → ns."""
    if isinstance(value, bool):
        raise ValueError("a duration is a string like '30s' or a number of seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return int(value * 1_000_000_000)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return int(float(match.group(1)) * _UNIT_NS[match.group(2)])
    raise ValueError(f"invalid duration {value!r}: use e.g. '30s', '5m', '1h', '7d'")


DurationNs = Annotated[int, BeforeValidator(parse_duration_ns)]


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


class ThresholdRule(BaseModel):
    """Fire when a value is at or above ``above`` (or at or below ``below``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    kind: Literal["threshold"] = "threshold"
    description: str = ""
    device_types: tuple[str, ...] = ()
    metric: str = Field(min_length=1, max_length=100)
    severity: Severity = Severity.WARNING
    above: float | None = None
    below: float | None = None
    clear: float | None = None
    for_ns: DurationNs = Field(default=0, alias="for")

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


Rule = ThresholdRule


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
