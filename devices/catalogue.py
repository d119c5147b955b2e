"""Device type catalogue: the metrics each type measures, their units and ranges."""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

from common import safetoml
from common.severity import SEVERITY_NAMES
from devices.errors import CatalogueError
from devices.events import EventType
from tsdb.lineproto import Measurement
from tsdb.schema import reading

LIMIT_NAMES: Final = ("low_low", "low", "high", "high_high")
"""Limit names, lowest first: a device type's defaults and a device's overrides use these."""

SEVERITIES: Final = SEVERITY_NAMES
"""Severity names (:class:`common.severity.Severity`, lowest first)."""

_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_INTERVAL_S: Final = 30 * 86400.0


def parse_duration_s(value: object) -> float:
    """``"15m"``, ``"1h"``, ``"30s"`` or a number of seconds → seconds (> 0, <= 30 days)."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
        else:
            try:
                seconds = float(value)
            except ValueError:
                seconds = None
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"invalid duration {str(value)[:40]!r}: use e.g. '30s', '15m', '1h'")
    if not 0 < seconds <= MAX_INTERVAL_S:
        raise ValueError(f"duration {str(value)[:40]!r} must be > 0 and at most 30 days")
    return seconds


def check_limits(spec: MetricSpec, limits: Mapping[str, Any]) -> list[str]:
    """Problems with ``limits`` for ``spec`` (names, finite numbers, order, inside the range)."""
    problems: list[str] = []
    values: dict[str, float] = {}
    for name, raw in limits.items():
        if name not in LIMIT_NAMES:
            problems.append(f"{spec.name}: unknown limit {str(name)[:32]!r} "
                            f"(use {', '.join(LIMIT_NAMES)})")
            continue
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            problems.append(f"{spec.name}.{name}: {str(raw)[:32]!r} is not a finite number")
            continue
        if not spec.low <= raw <= spec.high:
            problems.append(f"{spec.name}.{name}: {raw} outside the range "
                            f"[{spec.low}, {spec.high}] {spec.unit}")
            continue
        values[name] = float(raw)
    merged = {**spec.limits, **values}
    ordered = [(n, merged[n]) for n in LIMIT_NAMES if n in merged]
    for (n1, v1), (n2, v2) in itertools.pairwise(ordered):
        if v1 > v2:
            problems.append(f"{spec.name}: {n1} ({v1}) must not be above {n2} ({v2})")
    return problems


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric of a device type, in its canonical unit."""

    name: str
    unit: str
    low: float = float("-inf")
    high: float = float("inf")
    device_units: Mapping[str, float] = field(default_factory=dict)
    limits: Mapping[str, float] = field(default_factory=dict)

    def factor(self, unit: str | None) -> float | None:
        """Factor converting ``unit`` to the canonical unit; None if not accepted."""
        if unit is None or unit == self.unit:
            return 1.0
        return self.device_units.get(unit)


@dataclass(frozen=True, slots=True)
class EventSpec:
    """Severity of one device-side event type; ``levels`` maps the device's level."""

    severity: str
    levels: Mapping[int, str] = field(default_factory=dict)

    def severity_for(self, level: int | None) -> str:
        """The severity for ``level`` (the event's own severity when the level is not mapped)."""
        if level is not None and level in self.levels:
            return self.levels[level]
        return self.severity


@dataclass(frozen=True, slots=True)
class HealthSpec:
    """Reporting expectations of a device type."""

    interval_s: float = 3600.0
    offline_after: float = 3.0
    offline_severity: str = "minor"


DEFAULT_EVENTS: Final[Mapping[str, EventSpec]] = {
    EventType.ALARM.value: EventSpec("major", {1: "major", 2: "critical"}),
    EventType.FAULT.value: EventSpec("minor"),
    EventType.TAMPER.value: EventSpec("major"),
    EventType.LOW_BATTERY.value: EventSpec("warning"),
    EventType.VALVE_CLOSED.value: EventSpec("major"),
    EventType.POWER_LOSS.value: EventSpec("minor"),
}
"""Severities of events a type's ``[events]`` table does not name."""


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A device type: its name, metrics, health expectations and event severities."""

    name: str
    metrics: Mapping[str, MetricSpec]
    description: str = ""
    health: HealthSpec = field(default_factory=HealthSpec)
    events: Mapping[str, EventSpec] = field(default_factory=dict)

    def event_spec(self, event_type: str) -> EventSpec | None:
        """The severity mapping of ``event_type`` (type table, then defaults)."""
        return self.events.get(event_type) or DEFAULT_EVENTS.get(event_type)


@dataclass(frozen=True, slots=True)
class Catalogue:
    """All known device types by name."""

    types: Mapping[str, DeviceType]

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def __getitem__(self, name: str) -> DeviceType:
        return self.types[name]

    def measurements(self) -> list[Measurement]:
        """The InfluxDB measurement of every type: its metrics as float fields
        (:func:`tsdb.schema.reading`)."""
        return [reading(t.name, t.metrics) for t in self.types.values()]

    @classmethod
    def builtin(cls) -> Catalogue:
        """The catalogue shipped with the package."""
        text = resources.files("devices").joinpath("catalogue.toml").read_text("utf-8")
        return cls.from_toml(text, source="devices/catalogue.toml")

    @classmethod
    def with_file(cls, path: Path | None) -> Catalogue:
        """The built-in catalogue, extended by the operator's file ``path`` if one is set
        (``devices.catalogue``)."""
        catalogue = cls.builtin()
        return cls.load(path, catalogue) if path else catalogue

    @classmethod
    def load(cls, path: Path, base: Catalogue | None = None) -> Catalogue:
        """Load an operator catalogue file; its types extend or replace ``base``."""
        try:
            if path.stat().st_size > safetoml.MAX_TOML_BYTES:
                raise CatalogueError(f"{path}: larger than {safetoml.MAX_TOML_BYTES} bytes")
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogueError(f"{path}: cannot read catalogue: {exc}") from exc
        extra = cls.from_toml(text, source=str(path))
        merged = dict(base.types) if base else {}
        merged.update(extra.types)
        return cls(types=merged)

    @classmethod
    def from_toml(cls, text: str, *, source: str) -> Catalogue:
        """Parse catalogue TOML text; errors name ``source``."""
        try:
            data = safetoml.loads(text)
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
        unknown = set(spec) - {"unit", "range", "device_units", "limits"}
        if unknown:
            raise CatalogueError(f"{where}: metric {name!r}: unknown keys {sorted(unknown)}")
        rng = spec.get("range", [float("-inf"), float("inf")])
        if (not isinstance(rng, list) or len(rng) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in rng)
                or rng[0] > rng[1]):
            raise CatalogueError(f"{where}: metric {name!r}: range must be [low, high]")
        low, high = rng
        units = spec.get("device_units", {})
        if not isinstance(units, dict) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and v > 0
                for v in units.values()):
            raise CatalogueError(f"{where}: metric {name!r}: device_units factors must be > 0")
        metric = MetricSpec(
            name=name,
            unit=spec["unit"],
            low=float(low),
            high=float(high),
            device_units={str(k): float(v) for k, v in units.items()},
        )
        limits = spec.get("limits", {})
        if not isinstance(limits, dict):
            raise CatalogueError(f"{where}: metric {name!r}: limits must be a table")
        problems = check_limits(metric, limits)
        if problems:
            raise CatalogueError(f"{where}: " + "; ".join(problems))
        metrics[name] = MetricSpec(
            name=metric.name, unit=metric.unit, low=metric.low, high=metric.high,
            device_units=metric.device_units, limits={k: float(v) for k, v in limits.items()},
        )
    unknown_keys = set(body) - {"description", "metrics", "health", "events"}
    if unknown_keys:
        raise CatalogueError(f"{where}: unknown keys {sorted(unknown_keys)}")
    return DeviceType(name=type_name, metrics=metrics, description=str(body.get("description", "")),
                      health=_parse_health(body.get("health", {}), where),
                      events=_parse_events(body.get("events", {}), where))


def _severity(value: Any, where: str) -> str:
    if value not in SEVERITIES:
        raise CatalogueError(f"{where}: severity {str(value)[:32]!r} is not one of "
                             f"{', '.join(SEVERITIES)}")
    return str(value)


def _parse_health(body: Any, where: str) -> HealthSpec:
    if not isinstance(body, dict):
        raise CatalogueError(f"{where}: [health] must be a table")
    unknown = set(body) - {"interval", "offline_after", "offline_severity"}
    if unknown:
        raise CatalogueError(f"{where}: [health]: unknown keys {sorted(unknown)}")
    try:
        interval = parse_duration_s(body.get("interval", "1h"))
    except ValueError as exc:
        raise CatalogueError(f"{where}: [health] interval: {exc}") from exc
    after = body.get("offline_after", 3)
    if isinstance(after, bool) or not isinstance(after, int | float) or not 1 <= after <= 100:
        raise CatalogueError(f"{where}: [health] offline_after must be a number in [1, 100]")
    return HealthSpec(interval_s=interval, offline_after=float(after),
                      offline_severity=_severity(body.get("offline_severity", "minor"),
                                                 f"{where}: [health] offline_severity"))


def _parse_events(body: Any, where: str) -> dict[str, EventSpec]:
    if not isinstance(body, dict):
        raise CatalogueError(f"{where}: [events] must be a table")
    events: dict[str, EventSpec] = {}
    for name, spec in body.items():
        here = f"{where}: event {name!r}"
        if name not in EventType.__members__.values():
            raise CatalogueError(f"{here}: unknown event type")
        if not isinstance(spec, dict) or set(spec) - {"severity", "levels"}:
            raise CatalogueError(f"{here}: needs {{ severity = ..., levels = {{...}} }}")
        levels: dict[int, str] = {}
        raw_levels = spec.get("levels", {})
        if not isinstance(raw_levels, dict):
            raise CatalogueError(f"{here}: levels must be a table")
        for level, sev in raw_levels.items():
            if not str(level).isdigit() or not 0 <= int(level) <= 9:
                raise CatalogueError(f"{here}: level {level!r} must be 0..9")
            levels[int(level)] = _severity(sev, here)
        events[name] = EventSpec(_severity(spec.get("severity"), here), levels)
    return events
