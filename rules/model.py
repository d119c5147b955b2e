"""What every rule shares (durations, severity, the base model) and the findings rules
produce; each kind's own model lives in :mod:`rules.kinds`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

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
    kind: str
    """The kind's name (each kind narrows it to its own literal, with the same position
    among the fields, so fingerprints and dumps are those of before)."""


Rule = RuleBase
"""A loaded rule of any kind (each kind's model lives in :mod:`rules.kinds`)."""


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
