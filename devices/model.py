"""The device model."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

# DESIGN.md pattern, plus at least one letter or digit so "." and ".." are refused.
DEVICE_ID_RE: Final = re.compile(r"(?=[^/]*[A-Za-z0-9])[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device and where it belongs (grid, district, responsible unit)."""

    id: str
    type: str
    grid: str = ""
    district: str = ""
    unit: str = ""
    name: str = ""
    limits: dict[str, dict[str, float]] = field(default_factory=dict, hash=False, compare=False)


def valid_device_id(device_id: str) -> bool:
    """True when ``device_id`` matches the topic scheme's id pattern."""
    return DEVICE_ID_RE.fullmatch(device_id) is not None
