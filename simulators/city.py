"""City layout generator: districts, grids (网格), responsible units, water DMAs, devices.

Deterministic for a seed. Writes the inventory CSV that ``lifeline devices import``
and ``devices.inventory`` read.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devices.model import Device

DISTRICT_NAMES = (
    "dongcheng", "xicheng", "nanshan", "beihu", "jiangbei", "xinqiao", "hexi", "longgang",
    "baiyun", "qingshan",
)
# Responsible unit per device type (处置单位), suffixed with the district.
UNIT_BY_TYPE = {
    "gas_alarm": "gas-company",
    "gas_pipeline": "gas-company",
    "water_pressure": "water-utility",
    "water_flow": "water-utility",
    "water_quality": "water-utility",
    "drain_level": "drainage-bureau",
    "manhole_cover": "municipal-facilities",
    "heat_pipe": "heating-company",
}
ID_PREFIX = {
    "gas_alarm": "ga", "gas_pipeline": "gp", "water_pressure": "wp", "water_flow": "wf",
    "water_quality": "wq", "drain_level": "dl", "manhole_cover": "mc", "heat_pipe": "hp",
}
# Typical reporting intervals of NB-IoT / LoRa devices, seconds.
DEFAULT_INTERVAL_S = {
    "gas_alarm": 300, "gas_pipeline": 60, "water_pressure": 60, "water_flow": 60,
    "water_quality": 300, "drain_level": 120, "manhole_cover": 600, "heat_pipe": 120,
}
# Share of each type in a mid-size city's fleet (gas alarms dominate).
DEFAULT_MIX = {
    "gas_alarm": 0.55, "gas_pipeline": 0.05, "water_pressure": 0.10, "water_flow": 0.04,
    "water_quality": 0.02, "drain_level": 0.10, "manhole_cover": 0.10, "heat_pipe": 0.04,
}
CENTRE = (30.58, 114.30)  # lat, lon of the (fictional) city centre


@dataclass(frozen=True, slots=True)
class Grid:
    """A management grid (网格): code, district, centre."""

    code: str
    district: str
    lat: float
    lon: float
    dma: str


@dataclass(frozen=True, slots=True)
class SimDevice:
    """A device as the simulator knows it: registry data plus placement and timing."""

    device: Device
    lat: float
    lon: float
    dma: str
    interval_s: int
    inlet: bool = False  # a DMA inlet flow meter

    @property
    def id(self) -> str:
        """The device id."""
        return self.device.id

    @property
    def type(self) -> str:
        """The device type."""
        return self.device.type


@dataclass(frozen=True, slots=True)
class CityLayout:
    """The generated city."""

    districts: tuple[str, ...]
    grids: tuple[Grid, ...]
    dmas: Mapping[str, tuple[str, ...]]  # DMA id -> grid codes
    devices: tuple[SimDevice, ...]
    seed: int
    by_id: Mapping[str, SimDevice] = field(default_factory=dict)

    def of_type(self, dtype: str) -> list[SimDevice]:
        """Devices of one type."""
        return [d for d in self.devices if d.type == dtype]

    def in_dma(self, dma: str, dtype: str | None = None) -> list[SimDevice]:
        """Devices placed in a DMA (optionally of one type)."""
        return [d for d in self.devices if d.dma == dma and (dtype is None or d.type == dtype)]

    def in_grid(self, grid: str, dtype: str | None = None) -> list[SimDevice]:
        """Devices placed in a grid (optionally of one type)."""
        return [d for d in self.devices
                if d.device.grid == grid and (dtype is None or d.type == dtype)]


def _counts(total: int, mix: Mapping[str, float]) -> dict[str, int]:
    weight = sum(mix.values())
    counts = {t: int(total * w / weight) for t, w in mix.items()}
    leftover = total - sum(counts.values())
    for t in sorted(mix, key=lambda k: -mix[k])[:leftover]:
        counts[t] += 1
    return counts


def generate_city(
    *,
    districts: int = 5,
    grids: int = 80,
    devices: int | Mapping[str, int] = 10_000,
    seed: int = 1,
    intervals: Mapping[str, int] | None = None,
) -> CityLayout:
    """A city of ``districts`` districts, ``grids`` grids and the given devices.

    ``devices`` is a total (split by a typical mix) or a count per type. Each DMA
    (district metered area) covers about four grids and gets one inlet flow meter
    when the fleet has flow meters.
    """
    if not 1 <= districts <= len(DISTRICT_NAMES):
        raise ValueError(f"districts must be 1..{len(DISTRICT_NAMES)}")
    if grids < districts:
        raise ValueError("need at least one grid per district")
    rng = random.Random(seed)
    names = DISTRICT_NAMES[:districts]
    counts = dict(devices) if isinstance(devices, Mapping) else _counts(devices, DEFAULT_MIX)
    unknown = set(counts) - set(UNIT_BY_TYPE)
    if unknown:
        raise ValueError(f"unknown device types: {sorted(unknown)}")
    interval = {**DEFAULT_INTERVAL_S, **(intervals or {})}
    grid_list: list[Grid] = []
    dmas: dict[str, list[str]] = {}
    for g in range(grids):
        district = names[g % districts]
        angle = 2 * math.pi * (g % districts) / districts + rng.uniform(-0.3, 0.3)
        radius = rng.uniform(0.01, 0.12)
        d_index = sum(1 for x in grid_list if x.district == district)
        code = f"{district[:2].upper()}{g % districts + 1:02d}-{d_index + 1:03d}"
        dma = f"DMA-{district[:2].upper()}-{d_index // 4 + 1:02d}"
        grid_list.append(Grid(code, district, CENTRE[0] + radius * math.sin(angle),
                              CENTRE[1] + radius * math.cos(angle), dma))
        dmas.setdefault(dma, []).append(code)
    placed: list[SimDevice] = []
    inlet_dmas: set[str] = set()
    for dtype, unit in UNIT_BY_TYPE.items():
        for i in range(counts.get(dtype, 0)):
            grid = grid_list[rng.randrange(len(grid_list))]
            inlet = False
            if dtype == "water_flow":
                # The first flow meters go to DMA inlets, one per DMA.
                free = [d for d in sorted(dmas) if d not in inlet_dmas]
                if free:
                    dma = free[0]
                    inlet_dmas.add(dma)
                    grid = next(x for x in grid_list if x.dma == dma)
                    inlet = True
            device = Device(
                id=f"{ID_PREFIX[dtype]}-{i:05d}",
                type=dtype,
                grid=grid.code,
                district=grid.district,
                unit=f"{unit}-{grid.district}",
                dma=grid.dma,
                name=f"{dtype.replace('_', ' ')} {grid.code} #{i}",
            )
            placed.append(SimDevice(
                device=device,
                lat=round(grid.lat + rng.gauss(0, 0.003), 6),
                lon=round(grid.lon + rng.gauss(0, 0.003), 6),
                dma=grid.dma,
                interval_s=interval[dtype],
                inlet=inlet,
            ))
    layout = CityLayout(
        districts=names, grids=tuple(grid_list),
        dmas={k: tuple(v) for k, v in dmas.items()}, devices=tuple(placed), seed=seed,
        by_id={d.id: d for d in placed},
    )
    return layout


INVENTORY_HEADER = ("id", "type", "name", "grid", "district", "unit", "dma", "lat", "lon",
                    "interval")


def write_city_inventory(layout: CityLayout, path: Path) -> None:
    """Write the layout's devices as an inventory CSV (header row first)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(INVENTORY_HEADER)
        for d in layout.devices:
            dev = d.device
            writer.writerow([dev.id, dev.type, dev.name, dev.grid, dev.district, dev.unit,
                             d.dma, d.lat, d.lon, d.interval_s])
