"""Simulated scenario sources: a WNTR water network and pump stations, with ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devices.catalogue import Catalogue
from simulators.errors import ScenarioError
from simulators.hydraulic import simulate_network
from simulators.pumpstation import METRICS, simulate_stations
from simulators.scenario import (
    SourceSpec,
    builtin_scenario,
    load_scenario,
    parse_scenario,
    ruleset_path,
)
from simulators.stream import CityRun

START = 1772380800.0  # 2026-03-02 00:00 +08:00
DAY = 86_400.0


def stations(**kw: object) -> SourceSpec:
    return SourceSpec.model_validate({"kind": "pump_station", "step": "5m", "stations": 4,
                                      **kw})


def window(offsets: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (offsets >= lo) & (offsets < hi)


def test_pump_stations_are_deterministic_and_faults_break_relations_in_range() -> None:
    events = [
        {"kind": "bearing_wear", "at": "1d", "growth": "1d", "node": "0"},
        {"kind": "cavitation", "at": "2d", "duration": "8h", "node": "1"},
        {"kind": "valve_throttled", "at": "2d", "duration": "12h", "node": "2"},
        {"kind": "sensor_drift", "at": "1d", "node": "3", "metric": "pressure_out"},
    ]
    spec = stations(event=events)
    a = simulate_stations(spec, seed=5, start_s=START, duration_s=3 * DAY)
    b = simulate_stations(spec, seed=5, start_s=START, duration_s=3 * DAY)
    c = simulate_stations(spec, seed=6, start_s=START, duration_s=3 * DAY)
    assert set(a.values) == set(METRICS)
    assert all(np.array_equal(a.values[m], b.values[m]) for m in METRICS)
    assert not np.array_equal(a.values["flow"], c.values["flow"])
    assert a.event_station == [0, 1, 2, 3]
    clean = simulate_stations(stations(), seed=5, start_s=START, duration_s=3 * DAY)
    t = a.offsets_s
    # the same hours of the same station with and without the fault
    cav = window(t, 2 * DAY, 2 * DAY + 8 * 3600)
    valve = window(t, 2 * DAY, 2 * DAY + 12 * 3600)
    worn = window(t, 2 * DAY, 3 * DAY)

    def mean(res: object, metric: str, station: int, sel: np.ndarray) -> float:
        return float(res.values[metric][station, sel].mean())  # type: ignore[attr-defined]

    assert mean(a, "pressure_in", 1, cav) < mean(clean, "pressure_in", 1, cav) - 0.03
    assert mean(a, "vibration", 1, cav) > mean(clean, "vibration", 1, cav) + 0.5
    assert mean(a, "flow", 1, cav) < mean(clean, "flow", 1, cav)
    assert mean(a, "pressure_out", 2, valve) > mean(clean, "pressure_out", 2, valve) + 0.01
    assert mean(a, "flow", 2, valve) < mean(clean, "flow", 2, valve) * 0.95
    assert mean(a, "current", 2, valve) < mean(clean, "current", 2, valve)
    assert mean(a, "vibration", 0, worn) > mean(clean, "vibration", 0, worn) + 1.0
    assert mean(a, "temperature", 0, worn) > mean(clean, "temperature", 0, worn) + 5.0
    assert mean(a, "current", 0, worn) > mean(clean, "current", 0, worn)
    # sensor drift: only the drifting sensor moves (its flow is the same as without it)
    assert mean(a, "pressure_out", 3, worn) > mean(clean, "pressure_out", 3, worn) + 0.02
    assert np.allclose(a.values["flow"][3], clean.values["flow"][3])
    # every sensor stays inside its catalogue range and below its high limits
    pump = Catalogue.builtin().types["pump_station"]
    for metric in METRICS:
        spec_m = pump.metrics[metric]
        assert spec_m.low <= a.values[metric].min() <= a.values[metric].max() <= spec_m.high
    assert a.values["vibration"].max() < 4.5 and a.values["temperature"].max() < 90.0


def test_pump_station_scenario_publishes_its_devices_with_truth() -> None:
    run = CityRun(load_scenario(builtin_scenario("pump-station-faults")))
    assert [d.type for d in run.layout.devices] == ["pump_station"] * 4
    kinds = [(t.kind, t.category, t.devices) for t in run.truth]
    assert kinds == [("bearing_wear", "process", ("ps-00000",)),
                     ("cavitation", "process", ("ps-00001",)),
                     ("valve_throttled", "process", ("ps-00002",)),
                     ("sensor_drift", "sensor", ("ps-00003",))]
    first = next(iter(run.chunks(300.0)))
    assert {m.device_id for m in first} == {"ps-00000", "ps-00001", "ps-00002", "ps-00003"}
    assert all(m.readings == len(METRICS) for m in first)


def network(**kw: object) -> SourceSpec:
    return SourceSpec.model_validate({"kind": "water_network", "step": "15m",
                                      "pressure_sensors": 12, "flow_sensors": 4, "dmas": 3,
                                      **kw})


def test_water_network_leak_truth_matches_the_hydraulics(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELINE_CACHE_DIR", str(tmp_path))
    leaks = network(event=[
        {"kind": "leak", "at": "3h", "duration": "5h", "size": 8.0},  # abrupt
        {"kind": "leak", "at": "10h", "growth": "6h", "size": 8.0},  # grows to full size
    ])
    hours = 18 * 3600.0
    a = simulate_network(leaks, seed=3, start_s=START, duration_s=hours)
    assert list((tmp_path / "scenarios").glob("network-*.npz"))  # cached
    b = simulate_network(leaks, seed=3, start_s=START, duration_s=hours)  # from the cache
    fresh = simulate_network(leaks, seed=3, start_s=START, duration_s=hours, use_cache=False)
    for other in (b, fresh):
        assert np.allclose(a.pressure, other.pressure) and np.allclose(a.flow, other.flow)
        assert (a.pressure_nodes, a.affected, a.leak_nodes) == (
            other.pressure_nodes, other.affected, other.leak_nodes)
    clean = simulate_network(network(), seed=3, start_s=START, duration_s=hours)
    assert a.pressure_nodes == clean.pressure_nodes and a.flow_links == clean.flow_links
    t = a.offsets_s
    assert min(a.leak_m3h) > 10.0  # the orifices really discharged
    moved = [k.split(":", 1)[1] for k in a.affected[0] if k.startswith("p:")]
    assert moved, a.affected
    rows = [a.pressure_nodes.index(n) for n in moved]
    # the leak lowers pressure at every sensor it is said to affect
    sel = window(t, 3 * 3600, 8 * 3600)
    drop = clean.pressure[rows][:, sel].mean(axis=1) - a.pressure[rows][:, sel].mean(axis=1)
    assert (drop > 0).all()
    # ... and nothing differs before it starts
    before = t < 3 * 3600
    assert np.allclose(a.pressure[:, before], clean.pressure[:, before], atol=1e-9)
    # the growing leak: its flow effect is larger once it is full grown
    diff = np.abs(clean.flow - a.flow).sum(axis=0)
    early = window(t, 10 * 3600, 11 * 3600)
    late = window(t, 16 * 3600, 18 * 3600)
    assert diff[late].mean() > 2 * diff[early].mean() > 0


def test_bad_sources_are_refused() -> None:
    with pytest.raises(ScenarioError, match="unknown source event"):
        parse_scenario('[scenario]\nname = "x"\n[source]\nkind = "pump_station"\n'
                       '[[source.event]]\nkind = "meteor"\n', source="s.toml")
    with pytest.raises(ScenarioError, match=r"source\.kind"):
        parse_scenario('[scenario]\nname = "x"\n[source]\nkind = "gasworks"\n', source="s.toml")
    bad = network(network="Nope", event=[])
    with pytest.raises(ScenarioError, match="WNTR ships no network 'Nope'"):
        simulate_network(bad, seed=1, start_s=START, duration_s=DAY, use_cache=False)


def test_rule_sets_by_name_or_path(tmp_path: Path) -> None:
    assert ruleset_path("pump-station-multivariate").name == "pump-station-multivariate.toml"
    own = tmp_path / "mine.toml"
    own.write_text("", "utf-8")
    assert ruleset_path(str(own)) == own
    with pytest.raises(ScenarioError, match="shipped: pump-station-multivariate"):
        ruleset_path("nope")
