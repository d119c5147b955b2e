"""The device model."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Final

# docs/design.md pattern, plus at least one letter or digit so "." and ".." are refused.
DEVICE_ID_RE: Final = re.compile(r"(?=[^/]*[A-Za-z0-9])[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device: what it is, where it is and who is responsible for it.

    ``limits`` are per-device overrides of the catalogue's default limits,
    ``{metric: {"low_low"|"low"|"high"|"high_high": value}}`` in canonical units.
    ``interval_s`` is the expected reporting interval (None: the type's default).
    """

    id: str
    type: str
    grid: str = ""  # 网格 code
    district: str = ""
    unit: str = ""  # responsible unit (department / company)
    name: str = ""
    limits: dict[str, dict[str, float]] = field(default_factory=dict, hash=False)
    lat: float | None = None
    lon: float | None = None
    address: str = ""
    dma: str = ""  # district metered area / pressure zone (water)
    install_date: date | None = None
    tags: tuple[str, ...] = ()
    enabled: bool = True
    interval_s: float | None = None


def valid_device_id(device_id: str) -> bool:
    """True when ``device_id`` matches the topic scheme's id pattern."""
    return DEVICE_ID_RE.fullmatch(device_id) is not None
