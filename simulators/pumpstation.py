"""Pump stations from a simple physical model, with faults that keep every sensor in range.

Each station is one ``pump_station`` device reporting flow (m³/h), inlet and outlet
pressure (MPa), motor current (A), vibration (mm/s RMS), motor temperature (°C) and power
factor. A variable-speed pump follows the diurnal demand (speed ratio ``n``): its curve
``H = H0·n² − a·Q²`` (affinity laws) meets the system curve ``H = Hs + r·Q²``; shaft power
is ``ρgQH / η(Q/n)``, the motor current follows from the power and the power factor, the
motor temperature is a first-order heat balance (``I²`` losses, 40-minute time constant)
around a daily ambient cycle, vibration grows away from the best efficiency point.

Faults (each keeps every single sensor inside its normal range; only the relations
between them break): ``bearing_wear`` (vibration and temperature creep up with a little
more current for the friction), ``cavitation`` (inlet pressure drops, vibration spikes,
flow and head drop), ``valve_throttled`` (a partly closed discharge valve: system
resistance up, so outlet pressure up, flow and current down), ``sensor_drift`` (one
sensor drifts slowly, default the outlet pressure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simulators.models import local_hour, water_demand
from simulators.scenario import SourceSpec

F = npt.NDArray[np.float64]
METRICS = ("flow", "pressure_in", "pressure_out", "current", "vibration", "temperature",
           "power_factor")
RHO_G = 1000.0 * 9.81
VOLTAGE = 380.0
MOTOR_EFF = 0.93
TAU_S = 2400.0  # motor thermal time constant
DRIFT_PER_DAY = {"pressure_out": 0.02, "pressure_in": 0.01, "flow": 15.0, "current": 3.0,
                 "vibration": 0.4, "temperature": 2.0, "power_factor": 0.02}


@dataclass(frozen=True, slots=True)
class StationResult:
    """Readings of every station: metric -> (stations, T), and where each event is."""

    offsets_s: F
    values: dict[str, F]
    event_station: list[int]  # per source event


def _station_params(rng: np.random.Generator, n: int) -> dict[str, F]:
    q_bep = rng.uniform(300.0, 700.0, n)  # m³/h at the best efficiency point
    h_bep = rng.uniform(35.0, 55.0, n)  # m
    hs = h_bep * rng.uniform(0.55, 0.7, n)  # static head of the system
    return {
        "q_bep": q_bep, "h_bep": h_bep, "hs": hs,
        "h0": h_bep * 1.25,  # shut-off head at full speed
        "a": (h_bep * 0.25) / q_bep**2,  # pump curve H = H0 n² - a Q²
        "r": (h_bep - hs) / q_bep**2,  # system curve H = Hs + r Q²
        "eta": rng.uniform(0.72, 0.82, n),
        "p_in": rng.uniform(0.08, 0.15, n),  # suction pressure, MPa
        "vib0": rng.uniform(1.2, 2.0, n),  # mm/s at the BEP
        "t_amb": rng.uniform(22.0, 28.0, n),
        "rise": rng.uniform(25.0, 35.0, n),  # °C temperature rise at the rated current
    }


def simulate_stations(spec: SourceSpec, *, seed: int, start_s: float, duration_s: float
                      ) -> StationResult:
    """Simulate ``spec.stations`` pump stations with ``spec.event`` faults (deterministic)."""
    rng = np.random.default_rng(seed)
    n = spec.stations
    offsets = np.arange(0.0, duration_s, spec.step)
    steps = offsets.shape[0]
    t = start_s + offsets
    p = _station_params(rng, n)
    col = {k: v[:, None] for k, v in p.items()}
    demand = water_demand(local_hour(t))[None, :] / 1.0
    speed = np.clip(0.72 + 0.28 * demand + rng.normal(0, 0.005, (n, steps)), 0.7, 1.0)
    r = np.repeat(col["r"], steps, axis=1)
    p_in = col["p_in"] + 0.01 * np.sin(2 * np.pi * t / 86_400)[None, :]  # suction tank level
    vib_extra = np.zeros((n, steps))
    current_extra = np.zeros((n, steps))
    heat_extra = np.zeros((n, steps))
    head_loss = np.zeros((n, steps))
    drift: dict[str, F] = {}
    ev_rng = np.random.default_rng(seed + 101)
    stations: list[int] = []
    for ev in spec.event:
        s = int(ev_rng.integers(n)) if ev.node == "auto" else int(ev.node) % n
        stations.append(s)
        end = duration_s if ev.duration is None else min(duration_s, ev.at + ev.duration)
        on = (offsets >= ev.at) & (offsets < end)
        grow = np.clip((offsets - ev.at) / (ev.growth or 1.0), 0.0, 1.0) * on
        size = ev.size
        if ev.kind == "bearing_wear":
            vib_extra[s] += 1.6 * size * grow  # mm/s: still inside the normal 0.5..4.5
            heat_extra[s] += 8.0 * size * grow  # °C
            current_extra[s] += 0.03 * size * grow  # fraction of the current (friction)
        elif ev.kind == "cavitation":
            p_in[s] -= 0.05 * size * grow * (p_in[s] > 0)
            burst = (ev_rng.random(steps) < 0.3) * ev_rng.uniform(0.5, 1.5, steps)
            vib_extra[s] += size * grow * (0.6 + burst)
            head_loss[s] += 0.06 * size * grow  # the pump delivers less head
        elif ev.kind == "valve_throttled":
            r[s] *= 1.0 + 0.8 * size * grow
        elif ev.kind == "sensor_drift":
            metric = ev.metric or "pressure_out"
            per_s = DRIFT_PER_DAY.get(metric, 0.01) / 86_400
            span = np.clip(offsets - ev.at, 0.0, None) * on
            drift.setdefault(metric, np.zeros((n, steps)))[s] += size * per_s * span
    # operating point: H0 n² (1 - loss) - a Q² = Hs + r Q²
    h_pump0 = col["h0"] * speed**2 * (1.0 - head_loss)
    q = np.sqrt(np.clip(h_pump0 - col["hs"], 1.0, None) / (col["a"] + r))  # m³/h
    head = col["hs"] + r * q**2
    ratio = q / (col["q_bep"] * speed)
    eta = col["eta"] * np.clip(1.0 - (ratio - 1.0) ** 2, 0.3, 1.0)
    power_kw = RHO_G * (q / 3600.0) * head / eta / 1000.0 / MOTOR_EFF
    rated_kw = RHO_G * (col["q_bep"] / 3600.0) * col["h_bep"] / col["eta"] / 1000 / MOTOR_EFF
    load = power_kw / rated_kw
    pf = np.clip(0.62 + 0.25 * np.sqrt(np.clip(load, 0.0, 1.5)), 0.6, 0.92)
    current = power_kw * 1000.0 / (np.sqrt(3.0) * VOLTAGE * pf) * (1.0 + current_extra)
    rated_current = rated_kw * 1000.0 / (np.sqrt(3.0) * VOLTAGE * 0.87)
    ambient = col["t_amb"] + 3.0 * np.sin(2 * np.pi * (local_hour(t)[None, :] - 9) / 24)
    target = ambient + col["rise"] * (current / rated_current) ** 2 + heat_extra
    temp = np.empty_like(target)
    temp[:, 0] = target[:, 0]
    alpha = 1.0 - np.exp(-spec.step / TAU_S)
    for k in range(1, steps):
        temp[:, k] = temp[:, k - 1] + alpha * (target[:, k] - temp[:, k - 1])
    vibration = col["vib0"] * (1.0 + 0.8 * (ratio - 1.0) ** 2) + vib_extra
    noise = spec.noise
    values = {
        "flow": q * (1 + rng.normal(0, 0.01 * noise, q.shape)),
        "pressure_in": p_in + rng.normal(0, 0.002 * noise, q.shape),
        "pressure_out": p_in + head * 0.00980665 + rng.normal(0, 0.003 * noise, q.shape),
        "current": current * (1 + rng.normal(0, 0.01 * noise, q.shape)),
        "vibration": np.abs(vibration + rng.normal(0, 0.08 * noise, q.shape)),
        "temperature": temp + rng.normal(0, 0.3 * noise, q.shape),
        "power_factor": pf + rng.normal(0, 0.004 * noise, q.shape),
    }
    for metric, d in drift.items():
        values[metric] = values[metric] + d
    decimals = {"flow": 1, "pressure_in": 4, "pressure_out": 4, "current": 1, "vibration": 2,
                "temperature": 1, "power_factor": 3}
    return StationResult(offsets, {k: np.round(v, decimals[k]) for k, v in values.items()},
                         stations)

