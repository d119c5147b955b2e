"""What every rule shares (durations, severity, the base model) and the findings rules
produce; each kind's own model lives in :mod:`rules.kinds`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from common.duration import DAY_NS, MAX_DURATION_NS, DurationNs, parse_duration_ns
from common.severity import Severity

__all__ = ["DAY_NS", "MAX_DURATION_NS", "DurationNs", "Finding", "FindingState", "Finite",
           "Readings", "Rule", "RuleBase", "Severity", "parse_duration_ns", "rule_fingerprint"]

Finite = Annotated[float, Field(allow_inf_nan=False)]


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
    detail: str = ""
    """What the rule saw, where a kind says more than the value (``multivariate``: the
    alarming statistic and the metrics contributing most)."""


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
