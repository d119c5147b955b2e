"""Simulators: the city, the signal models and every fault do what their ground truth says."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest

from devices.catalogue import Catalogue
from devices.registry import read_inventory
from devices.topics import TopicKind
from simulators.city import generate_city, write_city_inventory
from simulators.errors import ScenarioError
from simulators.models import local_hour, water_demand
from simulators.scenario import builtin_scenario, builtin_scenarios_dir, parse_scenario
from simulators.stream import RECONNECT_S, STORE_AND_FORWARD, CityRun, SimMessage

HEAD = '[scenario]\nname = "t"\nseed = 3\nstart = "2026-03-02T00:00:00+08:00"\nduration = "{d}"\n'


def run_of(text: str) -> CityRun:
    return CityRun(parse_scenario(text, source="t.toml"))


def series(messages: list[SimMessage], device: str, metric: str) -> list[tuple[float, float]]:
    out = []
    for m in messages:
        if m.device_id == device and m.kind is TopicKind.TELEMETRY and not m.malformed:
            doc = orjson.loads(m.payload)
            out.append((doc["ts"] / 1000, doc["values"][metric]))
    return sorted(out)


def test_city_is_deterministic_and_importable(tmp_path: Path) -> None:
    a = generate_city(districts=5, grids=80, devices=10_000, seed=4)
    b = generate_city(districts=5, grids=80, devices=10_000, seed=4)
    assert a.devices == b.devices
    assert len(a.devices) == 10_000 and len({d.id for d in a.devices}) == 10_000
    assert len({g.code for g in a.grids}) == 80
    assert {d.device.district for d in a.devices} <= set(a.districts)
    inlets = [d for d in a.devices if d.inlet]
    assert len({d.dma for d in inlets}) == len(inlets) == len(a.dmas)
    path = tmp_path / "inventory.csv"
    write_city_inventory(a, path)
    assert [d.id for d in read_inventory(path, Catalogue.builtin())] == [d.id for d in a.devices]


def test_city_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="districts"):
        generate_city(districts=0)
    with pytest.raises(ValueError, match="unknown device types"):
        generate_city(devices={"toaster": 3})


def test_demand_has_peaks_and_night_minimum_and_pressure_follows() -> None:
    hours = np.arange(0, 24, 0.25)
    demand = water_demand(hours)
    assert demand[hours == 3.0][0] < 0.35 < 0.9 < demand[hours == 7.5][0]
    assert demand[hours == 19.5][0] > 0.8
    run = run_of(HEAD.format(d="24h") + "[fleet]\ndevices = { water_pressure = 20 }\n")
    msgs = list(run.messages())
    night, peak = [], []
    for m in msgs:
        doc = orjson.loads(m.payload)
        hour = float(local_hour(doc["ts"] / 1000))
        (night if 2 <= hour < 4 else peak if 7 <= hour < 8 else []).append(
            doc["values"]["pressure"])
    assert np.mean(night) > np.mean(peak) * 1.08  # head loss at peak demand


def test_every_device_reports_at_its_interval() -> None:
    run = run_of(HEAD.format(d="1h") + "[fleet]\ndevices = { gas_alarm = 10, drain_level = 5 }\n")
    counts: dict[str, int] = defaultdict(int)
    for m in run.messages():
        counts[m.device_id] += 1
    assert all(counts[d.id] == 3600 // d.interval_s for d in run.layout.devices)


def test_gas_leak_crosses_25_at_its_reference_time_and_alarms() -> None:
    run = run_of(HEAD.format(d="2h") + "[fleet]\ndevices = { gas_alarm = 50 }\n"
                 "[[incident]]\nkind = \"gas_leak\"\nat = \"10m\"\nrate = 1.0\n")
    msgs = list(run.messages())
    truth = run.truth[0]
    dev = truth.devices[0]
    readings = series(msgs, dev, "lel")
    first_above = next(t for t, v in readings if v >= 25.0)
    assert abs(first_above - truth.reference_s) <= 10.0  # alarm mode: a report every 10 s
    assert truth.reference_s - truth.start_s == pytest.approx(1500)
    events = [orjson.loads(m.payload) for m in msgs if m.kind is TopicKind.EVENT]
    assert [(e["type"], e["level"]) for e in events] == [("alarm", 1), ("alarm", 2)]
    other = next(d.id for d in run.layout.devices if d.id != dev)
    assert max(v for _, v in series(msgs, other, "lel")) < 10.0


def test_main_burst_drops_pressure_in_its_dma_only_and_raises_inlet_flow() -> None:
    run = run_of(builtin_scenario("main-burst-morning-peak").read_text())
    msgs = list(run.messages())
    truth = run.truth[0]
    burst_pressure = [d for d in truth.devices if d.startswith("wp-")]
    assert len(burst_pressure) >= 2
    for dev in burst_pressure:
        pts = series(msgs, dev, "pressure")
        before = np.mean([v for t, v in pts if truth.start_s - 600 <= t < truth.start_s])
        after = np.mean([v for t, v in pts if truth.start_s + 60 <= t < truth.start_s + 660])
        assert after < before * 0.72
    outside = next(d for d in run.layout.of_type("water_pressure") if d.dma != truth.dma)
    pts = series(msgs, outside.id, "pressure")
    before = np.mean([v for t, v in pts if truth.start_s - 600 <= t < truth.start_s])
    after = np.mean([v for t, v in pts if truth.start_s + 60 <= t < truth.start_s + 660])
    assert after > before * 0.9
    inlet = next(d for d in truth.devices if d.startswith("wf-"))
    flow = series(msgs, inlet, "flow")
    before = np.mean([v for t, v in flow if truth.start_s - 300 <= t < truth.start_s])
    after = np.mean([v for t, v in flow if truth.start_s + 60 <= t < truth.start_s + 360])
    assert after > before * 1.2


def test_background_leak_raises_minimum_night_flow_day_by_day() -> None:
    run = run_of(builtin_scenario("slow-leak-week").read_text())
    msgs = list(run.messages())
    flow = series(msgs, run.truth[0].devices[0], "flow")
    nights = defaultdict(list)
    for t, v in flow:
        if 2 <= float(local_hour(t)) < 4:
            nights[int((t - run.start_s) // 86_400)].append(v)
    mnf = [min(nights[d]) for d in sorted(nights)]
    assert mnf[6] > mnf[1] * 1.15  # +5 %/day of the night flow over five days
    assert abs(mnf[1] - mnf[0]) < mnf[0] * 0.1  # the leak starts on day 1


def test_blocked_drain_rises_and_rain_rises_then_falls() -> None:
    run = run_of(builtin_scenario("storm-drains").read_text())
    msgs = list(run.messages())
    rain, blocked = run.truth
    pts = series(msgs, blocked.devices[0], "level")
    assert pts[-1][1] > pts[0][1] + 2.0
    pts = series(msgs, rain.devices[0], "level")
    mid = (rain.start_s + rain.end_s) / 2
    at_mid = np.mean([v for t, v in pts if abs(t - mid) < 600])
    before = np.mean([v for t, v in pts if t < rain.start_s])
    after = np.mean([v for t, v in pts if t > rain.end_s + 600])
    assert at_mid > before + 0.4 and abs(after - before) < 0.1


def test_sensor_and_comms_faults_do_what_their_truth_says() -> None:
    run = run_of(builtin_scenario("sensor-faults").read_text())
    msgs = list(run.messages())
    truth = {t.kind: t for t in run.truth}
    assert all(not t.expect_case for t in run.truth)
    stuck = truth["stuck_sensor"]
    during = [v for t, v in series(msgs, stuck.devices[0], "pressure") if t >= stuck.start_s]
    assert len(during) > 100 and len(set(during)) == 1
    drift = truth["drift"]
    pts = [(t, v) for t, v in series(msgs, drift.devices[0], "pressure") if t >= drift.start_s]
    # Take the daily demand shape out of the pressure; what is left rises at the drift rate.
    flat = [v / (1 - 0.15 * float(water_demand(local_hour(t)))) for t, v in pts]
    assert np.polyfit([t for t, _ in pts], flat, 1)[0] * 3600 > 0.004
    dropout = truth["dropout"]
    assert not [t for t, _ in series(msgs, dropout.devices[0], "lel")
                if dropout.start_s <= t < dropout.end_s]
    offline = [t for t in run.truth if t.kind == "offline"]
    with_will = next(t for t in offline if t.devices[0] in
                     {m.device_id for m in msgs if m.kind is TopicKind.STATUS})
    statuses = [m.payload for m in msgs if m.kind is TopicKind.STATUS
                and m.device_id == with_will.devices[0]]
    assert statuses == [b"offline", b"online"]
    dup = truth["duplicates"]
    payloads = [m.payload for m in msgs if m.device_id == dup.devices[0]
                and dup.start_s <= m.send_s < dup.end_s]
    assert len(payloads) == 2 * len(set(payloads)) > 0
    bad = [m for m in msgs if m.device_id == truth["malformed"].devices[0] and m.malformed]
    assert bad and all(m.readings == 0 for m in bad)
    skew = truth["clock_skew"]
    skewed = [m for m in msgs if m.device_id == skew.devices[0] and m.send_s >= skew.start_s]
    assert all(abs(orjson.loads(m.payload)["ts"] / 1000 - m.send_s + 1800) < 1 for m in skewed)
    ooo = truth["out_of_order"]
    sent = [orjson.loads(m.payload)["ts"] for m in msgs if m.device_id == ooo.devices[0]
            and ooo.start_s <= m.send_s]
    assert sent != sorted(sent)


OUTAGE = """
[scenario]
name = "outage"
seed = 3
start = "2026-03-06T10:00:00+08:00"
duration = "30m"
[fleet]
districts = 1
grids = 4
devices = 120
"""


def test_broker_outage_withholds_everything_and_loggers_forward_their_readings() -> None:
    base = CityRun(parse_scenario(OUTAGE, source="base"))
    run = CityRun(parse_scenario(OUTAGE + '[[incident]]\nkind = "broker_outage"\nat = "10m"\n'
                                 'duration = "5m"\n', source="outage"))
    (truth,) = run.truth
    assert truth.kind == "broker_outage" and truth.devices == () and not truth.expect_case
    start, end = run.outages[0]
    assert (start, end) == (truth.start_s, truth.end_s) and end - start == 300
    before = list(base.messages())
    after = list(run.messages())
    assert not [m for m in after if start <= m.send_s < end]  # nothing reaches the broker
    # outside the window, the stream is the same message for message
    outside = [m for m in before if not start <= m.send_s < end]
    assert [m for m in after if not m.forwarded] == outside
    types = {d.id: d.type for d in run.layout.devices}
    window = [m for m in before if start <= m.send_s < end]
    kept = [m for m in window if m.kind is TopicKind.TELEMETRY and not m.malformed
            and types[m.device_id] in STORE_AND_FORWARD]
    lost = [m for m in window if m not in kept]
    assert kept and lost  # the fleet has both kinds of device
    forwarded = [m for m in after if m.forwarded]
    # one array per store-and-forward device, after the outage, with each reading's own time
    assert sorted(m.device_id for m in forwarded) == sorted({m.device_id for m in kept})
    for m in forwarded:
        assert end + RECONNECT_S[0] <= m.send_s <= end + RECONNECT_S[1]
        items = orjson.loads(m.payload)
        mine = [orjson.loads(k.payload) for k in kept if k.device_id == m.device_id]
        assert items == mine and all(start * 1000 <= i["ts"] < end * 1000 for i in items)
        assert m.readings == sum(len(i["values"]) for i in items)
    # the others' readings in the window are lost at the device: never published
    assert not any(m.device_id == lo.device_id and m.payload == lo.payload
                   for lo in lost for m in after)
    assert run.outage_stats == {"withheld_readings": sum(m.readings for m in kept),
                                "forwarded_messages": len(forwarded),
                                "lost_at_device": len(lost)}


def test_every_shipped_scenario_loads_and_places_its_incidents() -> None:
    names = sorted(p.stem for p in builtin_scenarios_dir().glob("*.toml"))
    assert names == ["broker-outage", "gas-leak-residential", "main-burst-morning-peak",
                     "pump-station-faults", "quiet-day", "sensor-faults", "slow-leak-week",
                     "storm-drains", "water-network-leaks"]
    for name in names:
        run = CityRun(parse_scenario(builtin_scenario(name).read_text(), source=name))
        assert all(t.devices or t.kind == "broker_outage" for t in run.truth)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[scenario]\nname = \"x\"\n[[incident]]\nkind = \"meteor\"\n", "unknown incident kind"),
        ("[scenario]\nname = \"x\"\nduration = \"soon\"\n", "scenario.duration"),
        ("[scenario]\nname = \"Bad Name\"\n", "scenario.name"),
        ("[scenario]\nname = \"x\"\nbogus = 1\n", "scenario.bogus"),
        ("[scenario]\nname = \"x\"\n[fleet]\ndistricts = 99\n", "fleet.districts"),
        ("[scenario\n", "TOML syntax error"),
    ],
)
def test_bad_scenario_files_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(text, source="s.toml")


def test_incident_on_missing_device_type_is_refused() -> None:
    with pytest.raises(ScenarioError, match="no DMA with an inlet meter"):
        run_of(HEAD.format(d="1h") + "[fleet]\ndevices = { gas_alarm = 5 }\n"
               "[[incident]]\nkind = \"background_leak\"\n")
    with pytest.raises(ScenarioError, match="no device 'nope'"):
        run_of(HEAD.format(d="1h") + "[fleet]\ndevices = { gas_alarm = 5 }\n"
               "[[incident]]\nkind = \"gas_leak\"\ndevice = \"nope\"\n")
    with pytest.raises(ScenarioError, match="no shipped scenario"):
        builtin_scenario("does-not-exist")
