"""Silences and maintenance windows."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SilenceKind(StrEnum):
    """A silence mutes notifications; a maintenance window also inhibits process alarms."""

    SILENCE = "silence"
    MAINTENANCE = "maintenance"


MATCHER_KEYS = ("device", "type", "grid", "rule")


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes alerts whose labels match every matcher (glob patterns) between start and end."""

    id: int
    kind: SilenceKind
    matchers: dict[str, str]
    starts_ns: int
    ends_ns: int
    created_by: str
    comment: str
    created_ns: int

    def active(self, now_ns: int) -> bool:
        """True between start (inclusive) and end (exclusive)."""
        return self.starts_ns <= now_ns < self.ends_ns
