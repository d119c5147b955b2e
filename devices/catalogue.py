"""Device type catalogue: the metrics each type measures, their units and ranges."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from devices.errors import CatalogueError


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric of a device type, in its canonical unit."""

    name: str
    unit: str
    low: float = float("-inf")
    high: float = float("inf")
    device_units: Mapping[str, float] = field(default_factory=dict)

    def factor(self, unit: str | None) -> float | None:
        """Factor converting ``unit`` to the canonical unit; None if not accepted."""
        if unit is None or unit == self.unit:
            return 1.0
        return self.device_units.get(unit)


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A device type: its name and metrics."""

    name: str
    metrics: Mapping[str, MetricSpec]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Catalogue:
    """All known device types by name."""

    types: Mapping[str, DeviceType]

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def __getitem__(self, name: str) -> DeviceType:
        return self.types[name]

    @classmethod
    def builtin(cls) -> Catalogue:
        """The catalogue shipped with the package."""
        text = resources.files("devices").joinpath("catalogue.toml").read_text("utf-8")
        return cls.from_toml(text, source="devices/catalogue.toml")

    @classmethod
    def load(cls, path: Path, base: Catalogue | None = None) -> Catalogue:
        """Load an operator catalogue file; its types extend or replace ``base``."""
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise CatalogueError(f"{path}: cannot read catalogue: {exc}") from exc
        extra = cls.from_toml(text, source=str(path))
        merged = dict(base.types) if base else {}
        merged.update(extra.types)
        return cls(types=merged)

    @classmethod
    def from_toml(cls, text: str, *, source: str) -> Catalogue:
        """Parse catalogue TOML text; errors name ``source``."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CatalogueError(f"{source}: {exc}") from exc
        types: dict[str, DeviceType] = {}
        for type_name, body in data.items():
            types[type_name] = _parse_type(type_name, body, source)
        return cls(types=types)


def _parse_type(type_name: str, body: Any, source: str) -> DeviceType:
    where = f"{source}: type {type_name!r}"
    if not isinstance(body, dict) or not isinstance(body.get("metrics"), dict):
        raise CatalogueError(f"{where}: needs a [metrics] table")
    metrics: dict[str, MetricSpec] = {}
    for name, spec in body["metrics"].items():
        if not isinstance(spec, dict) or not isinstance(spec.get("unit"), str):
            raise CatalogueError(f"{where}: metric {name!r} needs a unit")
        low, high = spec.get("range", [float("-inf"), float("inf")])
        units = spec.get("device_units", {})
        if not all(isinstance(v, int | float) and v > 0 for v in units.values()):
            raise CatalogueError(f"{where}: metric {name!r}: device_units factors must be > 0")
        metrics[name] = MetricSpec(
            name=name,
            unit=spec["unit"],
            low=float(low),
            high=float(high),
            device_units={str(k): float(v) for k, v in units.items()},
        )
    return DeviceType(name=type_name, metrics=metrics, description=str(body.get("description", "")))
