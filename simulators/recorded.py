"""A scenario's ``[source]``: a physically simulated fleet with its series and ground truth.

:func:`build_recording` turns a ``water_network`` (WNTR) or ``pump_station`` source into a
city layout (grids, DMAs, devices), the series each device reports (on the source's step)
and the truth of every source event; :class:`~simulators.stream.CityRun` then publishes
them like the signal models' readings (``[[incident]]`` comms and sensor faults still
apply on top).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from devices.model import Device
from simulators.city import CENTRE, CityLayout, Grid, SimDevice
from simulators.scenario import (
    SOURCE_EVENT_KINDS,
    SOURCE_EVENT_TRUTH,
    Scenario,
    SourceSpec,
    Truth,
)

F = npt.NDArray[np.float64]
DISTRICT = "hexi"


@dataclass(frozen=True, slots=True)
class RecordedFleet:
    """Devices of one type and their series: metric -> (devices, T) on ``offsets_s``."""

    dtype: str
    devices: list[SimDevice]
    offsets_s: F
    values: dict[str, F]


@dataclass(frozen=True, slots=True)
class Recording:
    """Layout, series and ground truth of a simulated source."""

    layout: CityLayout
    fleets: list[RecordedFleet]
    truth: list[Truth] = field(default_factory=list)


def _layout(grids: list[Grid], devices: list[SimDevice], seed: int) -> CityLayout:
    dmas: dict[str, list[str]] = {}
    for g in grids:
        dmas.setdefault(g.dma, []).append(g.code)
    return CityLayout(districts=(DISTRICT,), grids=tuple(grids),
                      dmas={k: tuple(v) for k, v in dmas.items()}, devices=tuple(devices),
                      seed=seed, by_id={d.id: d for d in devices})


def _device(dev_id: str, dtype: str, grid: Grid, unit: str, name: str, interval_s: float,
            lat: float, lon: float, *, inlet: bool = False) -> SimDevice:
    device = Device(id=dev_id, type=dtype, grid=grid.code, district=grid.district,
                    unit=f"{unit}-{grid.district}", dma=grid.dma, name=name)
    return SimDevice(device=device, lat=round(lat, 6), lon=round(lon, 6), dma=grid.dma,
                     interval_s=int(interval_s), inlet=inlet)


def _truth(scenario: Scenario, index: int, kind: str, devices: list[SimDevice], grid: str,
           dma: str, start_s: float, end_s: float, params: dict[str, object]) -> Truth:
    category, expect = SOURCE_EVENT_KINDS[kind]
    truth_kind = SOURCE_EVENT_TRUTH.get(kind, kind)
    return Truth(id=f"{scenario.name}#s{index + 1}-{truth_kind}", kind=truth_kind,
                 category=category, devices=tuple(d.id for d in devices), grid=grid, dma=dma,
                 start_s=start_s, end_s=end_s, reference_s=start_s, expect_case=expect,
                 params=params)


def build_recording(scenario: Scenario, start_s: float) -> Recording:
    """Simulate ``scenario.source`` from ``start_s`` (epoch seconds)."""
    spec = scenario.source
    if spec is None:
        raise ValueError("scenario has no [source]")
    if spec.kind == "water_network":
        return _network(scenario, spec, start_s)
    return _stations(scenario, spec, start_s)


def _network(scenario: Scenario, spec: SourceSpec, start_s: float) -> Recording:
    from simulators.hydraulic import (  # noqa: PLC0415 - WNTR is optional and heavy
        FLOW_NOISE_ABS,
        FLOW_NOISE_REL,
        PRESSURE_NOISE_MPA,
        simulate_network,
    )

    head = scenario.scenario
    sim = simulate_network(spec, seed=head.seed, start_s=start_s, duration_s=head.duration)
    xy = np.array(list(sim.coords.values()), dtype=np.float64)
    lo, span = xy.min(axis=0), np.maximum(xy.max(axis=0) - xy.min(axis=0), 1e-9)

    def latlon(key: str) -> tuple[float, float]:
        x, y = (np.array(sim.coords[key]) - lo) / span
        return CENTRE[0] - 0.05 + 0.1 * float(y), CENTRE[1] - 0.05 + 0.1 * float(x)

    grids = [Grid(f"HX{k + 1:02d}-{k + 1:03d}", DISTRICT, CENTRE[0], CENTRE[1],
                  f"DMA-{spec.network.upper()}-{k + 1:02d}") for k in range(spec.dmas)]
    pressure = [_device(f"wp-{i:05d}", "water_pressure", grids[d], "water-utility",
                        f"pressure at junction {node}", spec.step, *latlon(node))
                for i, (node, d) in enumerate(zip(sim.pressure_nodes, sim.pressure_dma,
                                                  strict=True))]
    seen: set[int] = set()
    flow = []
    for i, (link, d) in enumerate(zip(sim.flow_links, sim.flow_dma, strict=True)):
        flow.append(_device(f"wf-{i:05d}", "water_flow", grids[d], "water-utility",
                            f"flow in pipe {link}", spec.step, *latlon(link), inlet=d not in seen))
        seen.add(d)
    rng = np.random.default_rng(head.seed + 7)
    p_vals = np.round(sim.pressure + rng.normal(0, PRESSURE_NOISE_MPA * spec.noise,
                                                 sim.pressure.shape), 4)
    f_noise = (FLOW_NOISE_REL * np.abs(sim.flow) + FLOW_NOISE_ABS) * spec.noise
    f_vals = np.round(sim.flow + rng.normal(0, 1.0, sim.flow.shape) * f_noise, 2)
    fleets = [RecordedFleet("water_pressure", pressure, sim.offsets_s, {"pressure": p_vals}),
              RecordedFleet("water_flow", flow, sim.offsets_s, {"flow": f_vals})]
    by_key = {f"p:{n}": d for n, d in zip(sim.pressure_nodes, pressure, strict=True)}
    by_key.update({f"f:{n}": d for n, d in zip(sim.flow_links, flow, strict=True)})
    truth = []
    leaks = [ev for ev in spec.event if ev.kind == "leak"]
    for i, ev in enumerate(leaks):
        devs = [by_key[k] for k in sim.affected[i]]
        grid = grids[sim.leak_dma[i]]
        end = head.duration if ev.duration is None else min(head.duration, ev.at + ev.duration)
        truth.append(_truth(scenario, i, "leak", devs, grid.code, grid.dma, start_s + ev.at,
                            start_s + end,
                            {"node": sim.leak_nodes[i], "area_cm2": ev.size,
                             "growth_s": ev.growth or 0.0, "leak_m3h": sim.leak_m3h[i]}))
    return Recording(_layout(grids, pressure + flow, head.seed), fleets, truth)


def _stations(scenario: Scenario, spec: SourceSpec, start_s: float) -> Recording:
    from simulators.pumpstation import simulate_stations  # noqa: PLC0415

    head = scenario.scenario
    sim = simulate_stations(spec, seed=head.seed, start_s=start_s, duration_s=head.duration)
    grids = [Grid(f"HX01-{k + 1:03d}", DISTRICT, CENTRE[0] + 0.01 * k, CENTRE[1],
                  f"DMA-PS-{k + 1:02d}") for k in range(spec.stations)]
    devices = [_device(f"ps-{k:05d}", "pump_station", grids[k], "water-utility",
                       f"pump station #{k + 1}", spec.step, grids[k].lat, grids[k].lon)
               for k in range(spec.stations)]
    truth = []
    for i, ev in enumerate(spec.event):
        dev = devices[sim.event_station[i]]
        end = head.duration if ev.duration is None else min(head.duration, ev.at + ev.duration)
        params: dict[str, object] = {"size": ev.size, "growth_s": ev.growth or 0.0}
        if ev.kind == "sensor_drift":
            params["metric"] = ev.metric or "pressure_out"
        truth.append(_truth(scenario, i, ev.kind, [dev], dev.device.grid, dev.dma,
                            start_s + ev.at, start_s + end, params))
    fleet = RecordedFleet("pump_station", devices, sim.offsets_s, sim.values)
    return Recording(_layout(grids, devices, head.seed), [fleet], truth)
