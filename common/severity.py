"""Severity of findings, alerts, cases and notifications, lowest first."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


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
        return _RANK[self]


_RANK: Final = {s: i for i, s in enumerate(Severity)}

SEVERITY_NAMES: Final = tuple(s.value for s in Severity)
"""The severity names, lowest first."""
