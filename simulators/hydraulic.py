"""A water network simulated with a real hydraulic engine: WNTR (EPANET network models).

The network (default ``Net3``, shipped with WNTR) gets a smooth diurnal demand pattern
with day-to-day variation, is split into DMAs by position, and is simulated twice at
the scenario's step: without and with its leaks (WNTR's pressure-dependent leak model,
``junction.add_leak``; a growing leak widens its orifice in steps). Pressure sensors sit
at junctions, flow sensors on the pipes carrying most water. The ground truth of each
leak comes from the two runs: the sensors whose noise-free reading the leak moves by
more than their noise on average (and the DMA of the leaking junction).

The noise-free results are cached (``$LIFELINE_CACHE_DIR`` or ``~/.cache/citylifeline``,
keyed by the source spec, seed, times and WNTR version), so a scenario costs seconds
once and milliseconds after. WNTR is the optional ``hydraulic`` extra, imported here only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from simulators.errors import ScenarioError
from simulators.models import LOCAL_OFFSET_S, local_hour, water_demand
from simulators.scenario import SourceEvent, SourceSpec

log = logging.getLogger(__name__)

F = npt.NDArray[np.float64]
CACHE_VERSION = 1
M_TO_MPA = 0.00980665  # metres of water head -> MPa
PRESSURE_NOISE_MPA = 0.002
FLOW_NOISE_REL = 0.01
FLOW_NOISE_ABS = 0.3  # m³/h
LEAK_CD = 0.75  # discharge coefficient of a leak's orifice
AFFECTED_SIGMAS = 1.0  # affected: the leak moves the sensor by this many noise sd on average


@dataclass(frozen=True, slots=True)
class NetworkResult:
    """Noise-free simulated series of a network's sensors, with what each leak moved."""

    offsets_s: F  # (T,) seconds from the start
    pressure: F  # (n_pressure, T) MPa, with the leaks
    flow: F  # (n_flow, T) m³/h, with the leaks
    pressure_nodes: list[str]
    flow_links: list[str]
    pressure_dma: list[int]
    flow_dma: list[int]
    coords: dict[str, tuple[float, float]]  # sensor node/link -> (x, y)
    leak_nodes: list[str]  # per leak event
    leak_dma: list[int]
    affected: list[list[str]]  # per leak event: "p:<node>" / "f:<link>" sensors it moved
    leak_m3h: list[float]  # per leak event: mean leak outflow while it runs


def cache_dir() -> Path:
    """Where simulated series are cached."""
    env = os.environ.get("LIFELINE_CACHE_DIR")
    base = Path(env) if env else Path.home() / ".cache" / "citylifeline"
    return base / "scenarios"


def _wntr() -> Any:
    try:
        import wntr  # noqa: PLC0415 - heavy (pandas, scipy, networkx): only for this source
    except ImportError as exc:
        raise ScenarioError("the water_network source needs WNTR: pip install "
                            "'citylifeline[hydraulic]' (scripts/bootstrap installs it)") from exc
    return wntr


def network_path(name: str) -> Path:
    """The ``.inp`` file of a network shipped with WNTR (``Net1``, ``Net3``, ``ky4`` …)."""
    if not name.replace("_", "").isalnum():
        raise ScenarioError(f"bad network name {name!r}")
    wntr = _wntr()
    path = Path(wntr.__file__).parent / "library" / "networks" / f"{name}.inp"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.inp"))
        raise ScenarioError(f"WNTR ships no network {name!r}; known: {', '.join(known)}")
    return path


def demand_pattern(offsets_s: F, start_s: float, seed: int) -> F:
    """Diurnal demand multipliers (mean about 1) with day-to-day and step-to-step variation."""
    rng = np.random.default_rng(seed)
    t = start_s + offsets_s
    base = water_demand(local_hour(t))
    days = ((t + LOCAL_OFFSET_S) // 86_400).astype(np.int64)
    day_factor = rng.normal(1.0, 0.05, int(days.max() - days.min()) + 1)[days - days.min()]
    wiggle = rng.normal(1.0, 0.02, t.shape[0])
    pattern = base * day_factor * wiggle
    return np.asarray(pattern / base.mean(), dtype=np.float64)


def _sectors(coords: dict[str, tuple[float, float]], names: list[str], dmas: int) -> dict[str, int]:
    """DMA of each node: sectors of equal angle around the network's centre."""
    xy = np.array([coords[n] for n in names], dtype=np.float64)
    centre = xy.mean(axis=0)
    angle = np.arctan2(xy[:, 1] - centre[1], xy[:, 0] - centre[0])
    sector = np.floor((angle + math.pi) / (2 * math.pi) * dmas).astype(np.int64) % dmas
    return {n: int(s) for n, s in zip(names, sector.tolist(), strict=True)}


def _key(spec: SourceSpec, seed: int, start_s: float, duration_s: float) -> str:
    wntr = _wntr()
    doc = {"v": CACHE_VERSION, "wntr": str(wntr.__version__), "seed": seed,
           "start": round(start_s), "duration": round(duration_s),
           "spec": spec.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def simulate_network(spec: SourceSpec, *, seed: int, start_s: float, duration_s: float,
                     use_cache: bool = True) -> NetworkResult:
    """Simulate (or load from the cache) the network of ``spec`` with its leaks."""
    key = _key(spec, seed, start_s, duration_s)
    path = cache_dir() / f"network-{key}.npz"
    if use_cache and path.is_file():
        try:
            return _load(path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable cache %s: %s", path, exc)
    result = _simulate(spec, seed=seed, start_s=start_s, duration_s=duration_s)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _save(result, path)
        except OSError as exc:
            log.warning("cannot cache %s: %s", path, exc)
    return result


def _model(spec: SourceSpec, offsets_s: F, start_s: float, seed: int, duration_s: float) -> Any:
    wntr = _wntr()
    wn = wntr.network.WaterNetworkModel(str(network_path(spec.network)))
    step = int(spec.step)
    opts = wn.options.time
    opts.duration = int(duration_s)
    opts.hydraulic_timestep = step
    opts.report_timestep = step
    opts.pattern_timestep = step
    opts.pattern_start = 0
    wn.add_pattern("lifeline_diurnal", demand_pattern(offsets_s, start_s, seed).tolist())
    for name in wn.junction_name_list:
        for demand in wn.get_node(name).demand_timeseries_list:
            demand.pattern_name = "lifeline_diurnal"
    return wn


def _leak_nodes(spec: SourceSpec, junctions: list[str], seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 17)
    out = []
    for ev in spec.event:
        if ev.kind != "leak":
            continue
        if ev.node == "auto":
            out.append(junctions[int(rng.integers(len(junctions)))])
        elif ev.node in junctions:
            out.append(ev.node)
        else:
            raise ScenarioError(f"leak: the network has no junction {ev.node!r}")
    return out


def _add_leak(wn: Any, node: str, ev: SourceEvent, index: int, offsets_s: F,
              head_m: float) -> None:
    """An abrupt leak is WNTR's pressure-dependent orifice (``add_leak``); a growing one is
    an extra demand ramping up to the orifice's outflow at the junction's usual head."""
    junction = wn.get_node(node)
    area = ev.size / 1e4  # cm² -> m²
    start = int(ev.at)
    end_s = float(offsets_s[-1]) + 1.0
    end = int(min(end_s, ev.at + ev.duration)) if ev.duration is not None else None
    if not ev.growth:
        junction.add_leak(wn, area=area, discharge_coeff=LEAK_CD, start_time=start,
                          end_time=end)
        return
    q = LEAK_CD * area * math.sqrt(2 * 9.81 * max(head_m, 1.0))  # m³/s at full size
    ramp = np.clip((offsets_s - ev.at) / ev.growth, 0.0, 1.0)
    ramp[offsets_s < ev.at] = 0.0
    if end is not None:
        ramp[offsets_s >= end] = 0.0
    name = f"lifeline_leak_{index}"
    wn.add_pattern(name, ramp.tolist())
    junction.add_demand(base=q, pattern_name=name)


def _run(wn: Any) -> tuple[Any, Any, Any]:
    wntr = _wntr()
    try:
        results = wntr.sim.WNTRSimulator(wn).run_sim()
    except Exception as exc:  # WNTR raises its own and numpy's errors
        raise ScenarioError(f"the hydraulic simulation failed: {exc}") from exc
    return results.node["pressure"], results.link["flowrate"], results.node.get("leak_demand")


def _simulate(spec: SourceSpec, *, seed: int, start_s: float, duration_s: float) -> NetworkResult:
    step = spec.step
    offsets = np.arange(0.0, duration_s + 1e-9, step)
    base_wn = _model(spec, offsets, start_s, seed, duration_s)
    junctions = sorted(base_wn.junction_name_list)
    coords: dict[str, tuple[float, float]] = {}
    for name in junctions:
        x, y = base_wn.get_node(name).coordinates
        coords[name] = (float(x), float(y))
    dma_of = _sectors(coords, junctions, spec.dmas)
    base_p, base_f, _ = _run(base_wn)
    n = min(base_p.shape[0], offsets.shape[0])
    offsets = offsets[:n]
    rng = np.random.default_rng(seed)
    if spec.pressure_sensors > len(junctions):
        raise ScenarioError(f"{spec.network} has only {len(junctions)} junctions")
    p_nodes = sorted(rng.choice(junctions, spec.pressure_sensors, replace=False).tolist())
    pipes = [name for name in base_wn.pipe_name_list
             if base_wn.get_link(name).start_node_name in dma_of]
    mean_flow = {name: float(np.abs(base_f[name].to_numpy()[:n]).mean()) for name in pipes}
    f_links = sorted(sorted(pipes, key=lambda k: -mean_flow[k])[: spec.flow_sensors])
    link_coords: dict[str, tuple[float, float]] = {}
    for name in f_links:
        a = base_wn.get_link(name).start_node_name
        link_coords[name] = coords[a]
    leak_events = [ev for ev in spec.event if ev.kind == "leak"]
    nodes = _leak_nodes(spec, junctions, seed)
    leak_wn, leak_p, leak_f, leak_q = base_wn, base_p, base_f, None
    if leak_events:  # the same network again, with its leaks
        leak_wn = _model(spec, offsets, start_s, seed, duration_s)
        for i, (ev, node) in enumerate(zip(leak_events, nodes, strict=True)):
            _add_leak(leak_wn, node, ev, i, offsets, float(base_p[node].to_numpy()[:n].mean()))
        leak_p, leak_f, leak_q = _run(leak_wn)
    leak_d = leak_wn_demand(None, leak_wn, nodes, base_wn, n)

    def mat(frame: Any, cols: list[str], scale: float) -> F:
        return np.asarray(frame[cols].to_numpy()[:n].T * scale, dtype=np.float64)

    p_with, p_base = mat(leak_p, p_nodes, M_TO_MPA), mat(base_p, p_nodes, M_TO_MPA)
    f_with, f_base = mat(leak_f, f_links, 3600.0), mat(base_f, f_links, 3600.0)
    affected: list[list[str]] = []
    leak_m3h: list[float] = []
    for ev, node in zip(leak_events, nodes, strict=True):
        end = duration_s if ev.duration is None else min(duration_s, ev.at + ev.duration)
        sel = (offsets >= ev.at) & (offsets < end)
        moved: list[str] = []
        if sel.any():
            dp = np.abs(p_with[:, sel] - p_base[:, sel]).mean(axis=1)
            moved += [f"p:{x}" for x, d in zip(p_nodes, dp.tolist(), strict=True)
                      if d > AFFECTED_SIGMAS * PRESSURE_NOISE_MPA * max(spec.noise, 0.1)]
            noise_f = FLOW_NOISE_REL * np.abs(f_base[:, sel]).mean(axis=1) + FLOW_NOISE_ABS
            df = np.abs(f_with[:, sel] - f_base[:, sel]).mean(axis=1)
            moved += [f"f:{x}" for x, d, s in zip(f_links, df.tolist(), noise_f.tolist(),
                                                    strict=True)
                      if d > AFFECTED_SIGMAS * s * max(spec.noise, 0.1)]
        affected.append(moved)
        q = 0.0
        if sel.any():
            if leak_q is not None and node in leak_q:
                q += float(leak_q[node].to_numpy()[:n][sel].mean() * 3600.0)
            q += float(leak_d[node][sel].mean() * 3600.0)
        leak_m3h.append(round(q, 3))
    return NetworkResult(
        offsets_s=offsets, pressure=p_with, flow=f_with, pressure_nodes=p_nodes,
        flow_links=f_links, pressure_dma=[dma_of[x] for x in p_nodes],
        flow_dma=[dma_of[base_wn.get_link(x).start_node_name] for x in f_links],
        coords={**{x: coords[x] for x in p_nodes}, **link_coords},
        leak_nodes=nodes, leak_dma=[dma_of[x] for x in nodes], affected=affected,
        leak_m3h=leak_m3h)


def leak_wn_demand(index: Any, wn: Any, nodes: list[str], base_wn: Any, n: int
                   ) -> dict[str, F]:
    """Extra (leak) demand of each leaking junction, m³/s per step, from its demand lists."""
    out: dict[str, F] = {}
    for node in set(nodes):
        extra = np.zeros(n)
        base_count = len(base_wn.get_node(node).demand_timeseries_list)
        for ts in list(wn.get_node(node).demand_timeseries_list)[base_count:]:
            pattern = wn.get_pattern(ts.pattern_name).multipliers
            extra += ts.base_value * np.asarray(pattern, dtype=np.float64)[:n]
        out[node] = extra
    return out


def _save(r: NetworkResult, path: Path) -> None:
    meta = {"pressure_nodes": r.pressure_nodes, "flow_links": r.flow_links,
            "pressure_dma": r.pressure_dma, "flow_dma": r.flow_dma,
            "coords": {k: list(v) for k, v in r.coords.items()}, "leak_nodes": r.leak_nodes,
            "leak_dma": r.leak_dma, "affected": r.affected, "leak_m3h": r.leak_m3h}
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, offsets_s=r.offsets_s, pressure=r.pressure, flow=r.flow,
                        meta=np.array(json.dumps(meta)))
    tmp.replace(path)


def _load(path: Path) -> NetworkResult:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return NetworkResult(
            offsets_s=np.asarray(data["offsets_s"], dtype=np.float64),
            pressure=np.asarray(data["pressure"], dtype=np.float64),
            flow=np.asarray(data["flow"], dtype=np.float64),
            pressure_nodes=list(meta["pressure_nodes"]), flow_links=list(meta["flow_links"]),
            pressure_dma=list(meta["pressure_dma"]), flow_dma=list(meta["flow_dma"]),
            coords={k: (float(v[0]), float(v[1])) for k, v in meta["coords"].items()},
            leak_nodes=list(meta["leak_nodes"]), leak_dma=list(meta["leak_dma"]),
            affected=[list(a) for a in meta["affected"]],
            leak_m3h=[float(x) for x in meta["leak_m3h"]])
