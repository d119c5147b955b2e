"""Scenarios: a fleet plus a timeline of incidents, read from TOML, with ground truth.

```toml
[scenario]
name = "gas-leak-residential"
description = "..."
seed = 7
start = "2026-03-02T08:00:00+08:00"   # simulated start (default: now minus duration)
duration = "2h"

[fleet]
districts = 2
grids = 8
devices = { gas_alarm = 400, water_pressure = 20 }
intervals = { gas_alarm = "300s" }    # optional overrides

[[incident]]
kind = "gas_leak"
at = "30m"                 # offset from the start
device = "auto"            # or an id; "auto" picks one deterministically
rate = 1.0                 # %LEL per minute
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common import safetoml
from common.duration import parse_duration_ns
from simulators.errors import ScenarioError

Category = Literal["process", "sensor", "comms"]

# kind -> (category, device type it needs, default: does it warrant a case?)
INCIDENT_KINDS: dict[str, tuple[Category, str | None, bool]] = {
    "gas_leak": ("process", "gas_alarm", True),
    "gas_rupture": ("process", "gas_alarm", True),
    "main_burst": ("process", "water_pressure", True),
    "background_leak": ("process", "water_flow", True),
    "blocked_drain": ("process", "drain_level", True),
    "rain": ("process", "drain_level", False),
    "stuck_sensor": ("sensor", None, False),
    "drift": ("sensor", None, False),
    "spike": ("sensor", None, False),
    "dropout": ("comms", None, False),
    "offline": ("comms", None, False),
    "low_battery": ("sensor", None, False),
    "clock_skew": ("comms", None, False),
    "duplicates": ("comms", None, False),
    "out_of_order": ("comms", None, False),
    "malformed": ("comms", None, False),
    "broker_outage": ("comms", None, False),
}


def _seconds(value: object) -> float:
    return parse_duration_ns(value) / 1e9


class IncidentSpec(BaseModel):
    """One incident of a scenario's timeline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    at: float = 0.0  # seconds from the start
    duration: float | None = None  # seconds; None: until the end
    device: str = "auto"  # an id or "auto"
    devices: int = Field(default=1, ge=1, le=1000)  # how many devices "auto" picks
    dma: str = "auto"  # for DMA-wide incidents
    grid: str = "auto"  # for grid-wide incidents
    metric: str | None = None  # sensor faults: which metric (default: the main one)
    rate: float | None = None  # kind-specific rate (%LEL/min, m/h, fraction/day, units/h)
    magnitude: float | None = None  # kind-specific size (drop fraction, level rise, skew s …)
    will: bool = True  # offline: does the broker publish the device's will?
    expect_case: bool | None = None  # override of the kind's default

    @field_validator("at", "duration", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        return None if v is None else _seconds(v)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in INCIDENT_KINDS:
            raise ValueError(f"unknown incident kind {v!r}; known: {', '.join(INCIDENT_KINDS)}")
        return v


class FleetSpec(BaseModel):
    """The city and its devices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    districts: int = Field(default=5, ge=1, le=10)
    grids: int = Field(default=80, ge=1, le=10_000)
    devices: dict[str, int] | int = 10_000
    intervals: dict[str, float] = Field(default_factory=dict)

    @field_validator("intervals", mode="before")
    @classmethod
    def _intervals(cls, v: object) -> object:
        if isinstance(v, dict):
            return {k: _seconds(x) for k, x in v.items()}
        return v


# Events of a simulated source (``[source]``): kind -> (category, expect a case?).
SOURCE_EVENT_KINDS: dict[str, tuple[Category, bool]] = {
    "leak": ("process", True),  # water network: a leak at a junction (EPANET/WNTR)
    "bearing_wear": ("process", True),  # pump station faults
    "cavitation": ("process", True),
    "valve_throttled": ("process", True),
    "sensor_drift": ("sensor", False),  # one pump station sensor drifts
}
SOURCE_EVENT_TRUTH = {"leak": "network_leak"}  # truth kind when it differs from the event's


class SourceEvent(BaseModel):
    """An event simulated inside a ``[source]`` (its truth comes from the simulation)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    at: float = 0.0  # seconds from the start
    duration: float | None = None  # seconds; None: until the end
    size: float = Field(default=1.0, gt=0)  # leak: orifice area in cm²; faults: severity
    growth: float | None = None  # seconds to grow to full size (None: abrupt)
    node: str = "auto"  # leak: a junction of the network; faults: a station index
    metric: str | None = None  # sensor_drift: the drifting metric

    @field_validator("at", "duration", "growth", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        return None if v is None else _seconds(v)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in SOURCE_EVENT_KINDS:
            raise ValueError(f"unknown source event {v!r}; known: {', '.join(SOURCE_EVENT_KINDS)}")
        return v


class SourceSpec(BaseModel):
    """A physically simulated source replacing the signal models (see docs/simulators.md).

    ``water_network``: an EPANET network (WNTR) with diurnal demand, its pressure and flow
    sensors published as ``water_pressure`` / ``water_flow`` devices; ``pump_station``:
    pump stations (pump curve, affinity laws, motor heat) as ``pump_station`` devices.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["water_network", "pump_station"]
    network: str = "Net3"  # water_network: a network shipped with WNTR
    step: float = 300.0  # seconds between readings (hydraulic step)
    pressure_sensors: int = Field(default=24, ge=1, le=500)
    flow_sensors: int = Field(default=8, ge=0, le=500)
    dmas: int = Field(default=4, ge=1, le=50)
    stations: int = Field(default=4, ge=1, le=200)  # pump_station
    noise: float = Field(default=1.0, ge=0)  # sensor noise scale
    event: list[SourceEvent] = Field(default_factory=list)

    @field_validator("step", mode="before")
    @classmethod
    def _step(cls, v: object) -> object:
        return _seconds(v)


class ScenarioHead(BaseModel):
    """Name, seed and time span."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    description: str = ""
    seed: int = 1
    start: datetime | None = None
    duration: float = 3600.0

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        return _seconds(v)


class Scenario(BaseModel):
    """A whole scenario file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scenario: ScenarioHead
    fleet: FleetSpec = Field(default_factory=FleetSpec)
    source: SourceSpec | None = None  # a simulated source instead of [fleet]'s signal models
    incident: list[IncidentSpec] = Field(default_factory=list)

    @property
    def name(self) -> str:
        """The scenario's name."""
        return self.scenario.name


@dataclass(frozen=True, slots=True)
class Truth:
    """Ground truth of one incident as it was placed in the city."""

    id: str
    kind: str
    category: Category
    devices: tuple[str, ...]
    grid: str
    dma: str
    start_s: float  # epoch seconds
    end_s: float
    reference_s: float  # detection time is measured from here (e.g. gas crossing 25 %LEL)
    expect_case: bool
    params: dict[str, Any] = field(default_factory=dict)


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file."""
    try:
        if path.stat().st_size > safetoml.MAX_TOML_BYTES:
            raise ScenarioError(f"{path}: larger than {safetoml.MAX_TOML_BYTES} bytes")
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc}") from exc
    return parse_scenario(text, source=str(path))


def parse_scenario(text: str, *, source: str) -> Scenario:
    """Parse scenario TOML; errors name ``source`` and the field."""
    try:
        data = safetoml.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: TOML syntax error: {exc}") from exc
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ScenarioError(f"{source}: field {where!r}: {first['msg']}") from exc


def builtin_scenarios_dir() -> Path:
    """Directory of the scenarios shipped with the package."""
    return Path(str(resources.files("simulators").joinpath("scenarios")))


def builtin_scenario(name: str) -> Path:
    """Path of a shipped scenario by name (file stem)."""
    path = builtin_scenarios_dir() / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in builtin_scenarios_dir().glob("*.toml"))
        raise ScenarioError(f"no shipped scenario {name!r}; known: {', '.join(known)}")
    return path


def ruleset_path(name: str) -> Path:
    """A rule file or folder, or a rule set shipped in ``simulators/rulesets`` by name."""
    path = Path(name)
    if path.exists():
        return path
    shipped = Path(str(resources.files("simulators").joinpath("rulesets"))) / f"{name}.toml"
    if shipped.is_file():
        return shipped
    known = sorted(p.stem for p in shipped.parent.glob("*.toml"))
    raise ScenarioError(f"no rule file {name!r} and no shipped rule set of that name; "
                        f"shipped: {', '.join(known)}")


def live_start(duration_s: float, speed: float, now_s: float) -> float:
    """Start of a scenario re-based for a live (wall-clock) service.

    At ``speed`` 1 the scenario starts now and every reading is stamped as it is
    sent. Faster (or ``speed`` 0: as fast as possible) the simulated clock runs
    ahead of the wall clock, so the start is moved back until the last reading is
    stamped when it is sent: no reading is stamped in the future. Slower, it starts
    now and the readings fall behind the wall clock.
    """
    if speed == 0:
        return now_s - duration_s
    if speed > 1:
        return now_s - duration_s * (1 - 1 / speed)
    return now_s


def stamp_offsets(start_s: float, duration_s: float, speed: float,
                  wall_start_s: float) -> tuple[float, float]:
    """How far readings' timestamps lie from the wall time they are sent at:
    ``(most behind, most ahead)`` in seconds, both >= 0 (sent at ``wall_start_s``,
    ``speed`` simulated seconds per wall second, 0: all at once)."""
    first = start_s - wall_start_s
    last = start_s + duration_s - (wall_start_s + (duration_s / speed if speed else 0.0))
    return max(0.0, -min(first, last)), max(0.0, first, last)
