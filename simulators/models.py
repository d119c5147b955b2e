"""Signal models per device type: plausible values with noise, vectorised over devices.

Every model is a function of simulated time (epoch seconds) and per-device
parameters drawn once from the seed, so a run is reproducible. Daily patterns
use local time (UTC+8 by default).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

F = npt.NDArray[np.float64]
Col = npt.NDArray[Any]  # a generated metric column
LOCAL_OFFSET_S = 8 * 3600


def local_hour(t_s: F | float, offset_s: int = LOCAL_OFFSET_S) -> F:
    """Hour of the local day (0..24, fractional) for epoch seconds."""
    return np.asarray(((np.asarray(t_s) + offset_s) % 86_400) / 3600.0, dtype=np.float64)


def water_demand(hour: F) -> F:
    """Relative water demand over the day: morning and evening peaks, night minimum.

    About 1.0 at the morning peak (07:30) and about 0.3 between 02:00 and 04:00.
    """
    day = 1 / (1 + np.exp(-(hour - 9.0) * 2)) - 1 / (1 + np.exp(-(hour - 17.0) * 2))
    d = (0.30 + 0.70 * np.exp(-(((hour - 7.5) / 1.2) ** 2) / 2)
         + 0.60 * np.exp(-(((hour - 19.5) / 1.5) ** 2) / 2) + 0.25 * day)
    return np.asarray(d, dtype=np.float64)


@dataclass(slots=True)
class DeviceParams:
    """Per-device constants of one type (arrays aligned with the device list)."""

    base: F  # type-specific base level (pressure, level, flow scale …)
    rssi: F  # mean signal strength
    battery0: F  # battery voltage at the start
    phase_s: F  # reporting phase within the interval


def draw_params(dtype: str, n: int, rng: np.random.Generator) -> DeviceParams:
    """Per-device constants for ``n`` devices of ``dtype``."""
    base_ranges = {
        "gas_alarm": (0.0, 0.6), "gas_pipeline": (0.2, 0.4), "water_pressure": (0.28, 0.45),
        "water_flow": (80.0, 400.0), "water_quality": (0.2, 0.6), "drain_level": (0.3, 0.9),
        "manhole_cover": (0.0, 2.0), "heat_pipe": (85.0, 95.0),
    }
    lo, hi = base_ranges[dtype]
    return DeviceParams(
        base=rng.uniform(lo, hi, n),
        rssi=rng.uniform(-105.0, -60.0, n),
        battery0=rng.uniform(3.45, 3.65, n),
        phase_s=rng.uniform(0.0, 1.0, n),
    )


Model = Callable[[F, DeviceParams, np.random.Generator, float], dict[str, Col]]


def _r(x: Any, decimals: int = 0) -> Col:
    """Round like a device would report, as a float64 column."""
    return np.asarray(np.round(np.asarray(x, dtype=np.float64), decimals), dtype=np.float64)


def _health(p: DeviceParams, rng: np.random.Generator, days: float) -> dict[str, Col]:
    n = p.base.shape[0]
    return {
        "battery": _r(p.battery0 - 0.0004 * days + rng.normal(0, 0.005, n), 3),
        "rssi": _r(p.rssi + rng.normal(0, 3.0, n)),
    }


def gas_alarm(t: F, p: DeviceParams, rng: np.random.Generator, days: float) -> dict[str, Col]:
    """%LEL near zero (sensor noise and occasional cooking traces), CO a few ppm."""
    n = t.shape[0]
    lel = np.abs(rng.normal(p.base * 0.5, 0.3, n))
    lel += (rng.random(n) < 0.002) * rng.uniform(1.0, 6.0, n)  # brief traces, far below limits
    return {"lel": _r(lel, 2), "co_ppm": _r(np.abs(rng.normal(1.0, 1.0, n)), 1),
            **_health(p, rng, days)}


def gas_pipeline(t: F, p: DeviceParams, rng: np.random.Generator, days: float) -> dict[str, Col]:
    """Medium-pressure gas main: slightly lower at peak use; CH4 near zero at valve wells."""
    n = t.shape[0]
    demand = water_demand(local_hour(t))
    pressure = p.base * (1.0 - 0.04 * demand) + rng.normal(0, 0.002, n)
    return {"pressure": _r(pressure, 4),
            "ch4_ppm": _r(np.abs(rng.normal(2.0, 2.0, n)), 1), **_health(p, rng, days)}


def water_pressure(t: F, p: DeviceParams, rng: np.random.Generator, days: float) -> dict[str, Col]:
    """Supply pressure: lower at peak demand (head loss), highest at night."""
    n = t.shape[0]
    demand = water_demand(local_hour(t))
    pressure = p.base * (1.0 - 0.15 * demand) + rng.normal(0, 0.003, n)
    return {"pressure": _r(pressure, 4), **_health(p, rng, days)}


def water_flow(t: F, p: DeviceParams, rng: np.random.Generator, days: float) -> dict[str, Col]:
    """DMA inlet flow (m³/h): demand-shaped with a night minimum; totaliser integrates."""
    n = t.shape[0]
    demand = water_demand(local_hour(t))
    flow = p.base * demand * (1 + rng.normal(0, 0.02, n))
    totaliser = p.base * 24 * 0.55 * (days + 10.0)  # coarse running total, m³
    return {"flow": _r(flow, 2), "totaliser": _r(totaliser, 1),
            **_health(p, rng, days)}


def water_quality(t: F, p: DeviceParams, rng: np.random.Generator, days: float) -> dict[str, Col]:
    """Turbidity, residual chlorine and pH of treated water."""
    n = t.shape[0]
    return {"turbidity": _r(np.abs(p.base + rng.normal(0, 0.05, n)), 3),
            "chlorine": _r(0.5 + 0.1 * np.sin(t / 86_400 * 2 * np.pi)
                                 + rng.normal(0, 0.02, n), 3),
            "ph": _r(7.2 + rng.normal(0, 0.05, n), 2), **_health(p, rng, days)}


def drain_level(t: F, p: DeviceParams, rng: np.random.Generator, days: float) -> dict[str, Col]:
    """Water level in a drainage well: dry-weather base plus noise (rain is an incident)."""
    n = t.shape[0]
    return {"level": _r(np.maximum(0.0, p.base + rng.normal(0, 0.01, n)), 3),
            **_health(p, rng, days)}


def manhole_cover(t: F, p: DeviceParams, rng: np.random.Generator, days: float) -> dict[str, Col]:
    """Cover tilt in degrees: near its resting angle."""
    n = t.shape[0]
    return {"tilt": _r(np.abs(p.base + rng.normal(0, 0.2, n)), 2), **_health(p, rng, days)}


def heat_pipe(t: F, p: DeviceParams, rng: np.random.Generator, days: float) -> dict[str, Col]:
    """Supply / return temperatures (cooler return) and network pressure."""
    n = t.shape[0]
    hour = local_hour(t)
    swing = 2.0 * np.cos((hour - 6.0) / 24 * 2 * np.pi)
    supply = p.base + swing + rng.normal(0, 0.3, n)
    return {"supply_temp": _r(supply, 2),
            "return_temp": _r(supply - 38.0 + rng.normal(0, 0.4, n), 2),
            "pressure": _r(0.8 + rng.normal(0, 0.01, n), 3), **_health(p, rng, days)}


MODELS: Mapping[str, Model] = {
    "gas_alarm": gas_alarm, "gas_pipeline": gas_pipeline, "water_pressure": water_pressure,
    "water_flow": water_flow, "water_quality": water_quality, "drain_level": drain_level,
    "manhole_cover": manhole_cover, "heat_pipe": heat_pipe,
}


def metrics_of(dtype: str) -> Sequence[str]:
    """Metric names a model produces (sampled once)."""
    rng = np.random.default_rng(0)
    params = draw_params(dtype, 1, rng)
    return list(MODELS[dtype](np.zeros(1), params, rng, 0.0))
