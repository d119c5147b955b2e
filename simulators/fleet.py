"""A deterministic fleet of simulated devices placed on districts and grids."""

from __future__ import annotations

import random

from devices.model import Device

DISTRICTS = ("dongcheng", "xicheng", "nanshan", "beihu", "jiangbei")
UNITS = {"gas_alarm": "gas-company", "water_pressure": "water-utility"}
PREFIXES = {"gas_alarm": "gas", "water_pressure": "wp"}


def make_fleet(count: int, seed: int = 1) -> list[Device]:
    """``count`` devices, alternating gas alarms and water pressure loggers."""
    rng = random.Random(seed)
    devices = []
    for i in range(count):
        dtype = "gas_alarm" if i % 2 == 0 else "water_pressure"
        district = DISTRICTS[i % len(DISTRICTS)]
        grid = f"{district[:2].upper()}-{rng.randint(1, 16):02d}"
        devices.append(
            Device(
                id=f"{PREFIXES[dtype]}-{i:05d}",
                type=dtype,
                grid=grid,
                district=district,
                unit=UNITS[dtype],
                name=f"{dtype} #{i}",
            )
        )
    return devices
