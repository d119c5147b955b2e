"""Every panel query of every dashboard, run against a real InfluxDB filled through the
real ingest path (Mosquitto → ``Service`` → InfluxDB) with simulator data of every type."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from alerts.lifecycle.store import alerts
from dashboards.check import Outcome, run_dashboard, targets_of
from dashboards.definitions import DEVICE_TYPES, all_boards
from dashboards.query import InfluxQLClient
from dashboards.render import setup_sdk, to_json
from dashboards.templating import TimeRange, interpolate, resolve
from devices.store import DeviceStore
from devtools.harness import ManagedService
from lifeline.db import create_db_engine
from lifeline.influxquery import count_values
from lifeline.service import Service
from lifeline.settings import Settings
from simulators.city import write_city_inventory
from simulators.dispatch import DispatchPlan, DispatchSimulator
from simulators.runner import RunnerOptions, run_fleet
from simulators.scenario import parse_scenario
from simulators.stream import CityRun
from tests.support import clean_env

pytestmark = pytest.mark.integration

SECRET = "dashboards-secret-0123456789"
SCENARIO = """
[scenario]
name = "dashboards"
seed = 17
duration = "90m"

[fleet]
districts = 2
grids = 6
devices = { gas_alarm = 24, gas_pipeline = 6, water_pressure = 12, water_flow = 8, \
water_quality = 4, drain_level = 10, manhole_cover = 8, heat_pipe = 6 }
intervals = { gas_alarm = "120s", gas_pipeline = "120s", water_pressure = "120s", \
water_flow = "120s", water_quality = "300s", drain_level = "120s", manhole_cover = "300s", \
heat_pipe = "120s" }

[[incident]]
kind = "gas_leak"
at = "10m"
devices = 2
rate = 5.0

[[incident]]
kind = "main_burst"
at = "30m"
magnitude = 0.6
rate = 1.0

[[incident]]
kind = "blocked_drain"
at = "5m"
rate = 6.0
magnitude = 5.0

[[incident]]
kind = "drift"
metric = "tilt"
at = "20m"
rate = 120.0

[[incident]]
kind = "offline"
at = "60m"
will = true

[[incident]]
kind = "malformed"
at = "40m"
duration = "10m"
"""


@dataclass(frozen=True)
class City:
    """A filled InfluxDB database and what went into it."""

    url: str
    database: str
    start_ms: int
    end_ms: int
    values: int
    run_dir: Path


_FILLED: dict[str, City] = {}


def fill_city(mosquitto: ManagedService, influxdb: ManagedService, root: Path) -> City:
    """Publish the scenario through the real service once per InfluxDB (memoised)."""
    key = influxdb.info.url
    if key in _FILLED:
        return _FILLED[key]
    db = f"dash_{uuid.uuid4().hex[:8]}"
    prefix = f"dash{uuid.uuid4().hex[:6]}"
    run_dir = root / db
    run_dir.mkdir(parents=True)
    scenario = parse_scenario(SCENARIO, source="test")
    start_s = time.time() - scenario.scenario.duration - 60
    run = CityRun(scenario, start_s=start_s)
    inventory = run_dir / "inventory.csv"
    write_city_inventory(run.layout, inventory)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        api_port = sock.getsockname()[1]
    dispatch = DispatchSimulator(SECRET, f"http://127.0.0.1:{api_port}", DispatchPlan(
        accept_after_s=0.2, handle_after_s=0.5, return_rate=0.2, late_rate=0.3,
        late_extra_s=1.0)).start()
    settings = Settings(
        run_dir=run_dir,
        mqtt={"port": mosquitto.info.port, "prefix": prefix, "client_id": f"serve-{db}"},
        influx={"url": influxdb.info.url, "database": db},
        devices={"inventory": inventory, "holdoff": "1s"},
        webhook={"url": dispatch.url, "secret": SECRET},
        ingest={"metrics_interval": "1s"},
        cases={"kpi_interval": "1s", "deadlines": {
            s: {"registration": "1s", "dispatch": "1s", "handle": "1s", "verify": "1s"}
            for s in ("critical", "major", "minor", "warning")}},
        api={"port": api_port},
    )
    service = Service(settings)
    stop = threading.Event()
    service.start()
    started = time.monotonic()
    worker = threading.Thread(target=service.run, args=(stop,), daemon=True)
    worker.start()
    try:
        stats = run_fleet(run, RunnerOptions(port=mosquitto.info.port, prefix=prefix, speed=0,
                                             mode="devices"))
        assert stats.values > 10_000
        measurements = list(DEVICE_TYPES)
        deadline = time.monotonic() + 60
        while count_values(influxdb.info.url, db, measurements) < stats.values:
            assert time.monotonic() < deadline, "readings did not all reach InfluxDB"
            time.sleep(0.5)
        deadline = time.monotonic() + 30
        while dispatch.stats.handled < 3:  # the dispatch system works the cases
            assert time.monotonic() < deadline, f"cases not handled: {dispatch.stats}"
            time.sleep(0.5)
        time.sleep(3)  # KPIs, self-metrics and escalations are written
        # Rate panels (non_negative_derivative per $__interval, 10 s for the 3 h range the
        # checks use) need self-metrics in at least two intervals: run for 25 s at least.
        time.sleep(max(0.0, 25.0 - (time.monotonic() - started)))
    finally:
        stop.set()
        worker.join(60)
        dispatch.stop()
    city = City(influxdb.info.url, db, int(start_s * 1000) - 60_000,
                int(time.time() * 1000) + 60_000, stats.values, run_dir)
    _FILLED[key] = city
    return city


@pytest.fixture(scope="module")
def city(mosquitto: ManagedService, influxdb: ManagedService,
         tmp_path_factory: pytest.TempPathFactory) -> City:
    return fill_city(mosquitto, influxdb, tmp_path_factory.mktemp("dash"))


def _boards() -> list[tuple[dict[str, Any], Any]]:
    setup_sdk()
    return [(to_json(b), b) for b in all_boards()]


def _explain(bad: list[Outcome]) -> str:
    return "\n".join(f"{o.dashboard} / {o.target.panel} / {o.target.ref_id}: rows={o.rows} "
                     f"missing={o.missing} error={o.error}\n    {o.expanded}" for o in bad)


def test_every_panel_query_returns_rows_with_its_columns(city: City) -> None:
    tr = TimeRange(city.start_ms, city.end_ms)
    outcomes: list[Outcome] = []
    with InfluxQLClient(city.url, city.database) as client:
        for data, board in _boards():
            got = run_dashboard(data, board.queries, client, tr)
            assert len(got) == len(board.queries) == len(targets_of(data))
            outcomes += got
    bad = [o for o in outcomes if not o.ok]
    assert not bad, _explain(bad)
    assert len(outcomes) >= 50


def test_variables_are_answered_and_chain(city: City) -> None:
    tr = TimeRange(city.start_ms, city.end_ms)
    with InfluxQLClient(city.url, city.database) as client:
        for data, _ in _boards():
            resolved = resolve(data, client, tr)
            for name, r in resolved.items():
                assert r.options, f"{data['uid']}: variable {name} has no values"
        water = next(d for d, b in _boards() if b.uid == "lifeline-water")
        everything = resolve(water, client, tr)
        one_dma = everything["dma"].options[0]
        narrowed = resolve(water, client, tr, {"dma": [one_dma]})
        assert 0 < len(narrowed["grid"].options) < len(everything["grid"].options)
        assert set(narrowed["grid"].options) < set(everything["grid"].options)


def test_selecting_values_narrows_results_like_grafana(city: City) -> None:
    """A multi-value selection expands to an anchored (a|b) regex and filters rows."""
    tr = TimeRange(city.start_ms, city.end_ms)
    with InfluxQLClient(city.url, city.database) as client:
        data, board = next((d, b) for d, b in _boards() if b.uid == "lifeline-gas")
        everything = resolve(data, client, tr)
        grids = list(everything["grid"].options[:2])
        all_rows = {o.target.panel: o.rows for o in run_dashboard(data, board.queries, client,
                                                                  tr)}
        some = run_dashboard(data, board.queries, client, tr, {"grid": grids})
        assert all(not o.error for o in some), _explain([o for o in some if o.error])
        lel = next(o for o in some if o.target.panel == "Combustible gas %LEL per alarm")
        assert "/^(" + "|".join(grids) + ")$/" in lel.expanded
        assert 0 < lel.rows < all_rows["Combustible gas %LEL per alarm"]


def test_device_info_carries_every_registered_device(city: City) -> None:
    with InfluxQLClient(city.url, city.database) as client:
        series = client.query('SELECT last("lat") AS "lat", last("lon") AS "lon" FROM '
                              '"lifeline_device_info" GROUP BY "device", "type"')
        types = {s.tag("type") for s in series}
    fleet = parse_scenario(SCENARIO, source="test").fleet.devices
    assert types == set(fleet) and types <= set(DEVICE_TYPES)  # every registered type
    assert len(series) == sum(fleet.values()) == 78
    assert all(s.values[0][1] is not None and s.values[0][2] is not None for s in series)


def _cli_env(city: City, tmp_path: Path, database: str | None = None) -> dict[str, str]:
    env = clean_env()
    env.update(LIFELINE_INFLUX__URL=city.url, LIFELINE_INFLUX__DATABASE=database or city.database,
               LIFELINE_RUN_DIR=str(tmp_path / "run"))
    return env


def test_cli_check_reports_every_panel(city: City, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "lifeline", "dashboards", "check", "--range",
                           "3h", "--json"], env=_cli_env(city, tmp_path), capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()
    rows = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert len(rows) == sum(len(b.queries) for b in all_boards())
    assert all(r["ok"] and r["rows"] > 0 for r in rows)


def test_cli_check_names_empty_panels(city: City, tmp_path: Path) -> None:
    empty = f"empty_{uuid.uuid4().hex[:8]}"
    httpx.post(f"{city.url}/query", params={"q": f'CREATE DATABASE "{empty}"'}).raise_for_status()
    done = subprocess.run([sys.executable, "-m", "lifeline", "dashboards", "check"],
                          env=_cli_env(city, tmp_path, empty), capture_output=True, timeout=120)
    assert done.returncode == 1
    out = done.stdout.decode()
    assert "EMPTY lifeline-gas" in out and "0 of " in out


def test_hostile_tag_values_are_matched_exactly(influxdb: ManagedService) -> None:
    """Grid names with regex and quoting characters select exactly their own rows."""
    db = f"hostile_{uuid.uuid4().hex[:8]}"
    url = influxdb.info.url
    httpx.post(f"{url}/query", params={"q": f'CREATE DATABASE "{db}"'}).raise_for_status()
    grids = ["G.1/x(y)", "G01x", "a|b", "网格$^", "q'uote"]
    now_ms = int(time.time() * 1000)
    lines = []
    for i, grid in enumerate(grids):
        tag = grid.replace(" ", r"\ ").replace(",", r"\,").replace("=", r"\=")
        lines.append(f"lifeline_device_info,device=d{i},type=gas_alarm,district=D,grid={tag} "
                     f"lat=30.0,lon=114.0 {now_ms - 1000}")
        lines.append(f"gas_alarm,device=d{i},district=D,grid={tag} lel={i + 1}.0 {now_ms - 500}")
    httpx.post(f"{url}/write", params={"db": db, "precision": "ms"},
               content="\n".join(lines).encode()).raise_for_status()
    setup_sdk()
    board = next(b for b in all_boards() if b.uid == "lifeline-gas")
    data = to_json(board)
    tr = TimeRange(now_ms - 60_000, now_ms + 60_000)
    with InfluxQLClient(url, db) as client:
        assert set(resolve(data, client, tr)["grid"].options) == set(grids)
        for i, grid in enumerate(grids):
            got = run_dashboard(data, board.queries, client, tr, {"grid": [grid]})
            assert all(not o.error for o in got), _explain([o for o in got if o.error])
            top = next(o for o in got if o.target.panel == "Top devices by max %LEL")
            series = client.query(top.expanded)
            assert [row[1] for s in series for row in s.values] == [float(i + 1)], grid


def test_overview_map_shows_every_located_device_and_every_open_alert(city: City) -> None:
    """The geomap's three queries, joined by device as its joinByField transformation does,
    against the truth in the service database: every device with coordinates is a marker
    coloured by its online state, and every alert firing now is a marker on its device
    coloured by severity (also alerts that fired before the dashboard's time range)."""
    setup_sdk()
    board = next(b for b in all_boards() if b.uid == "lifeline-overview")
    data = to_json(board)
    panel = next(p for p in data["panels"] if p["type"] == "geomap")
    layers = panel["options"]["layers"]
    assert [layer["type"] for layer in layers] == ["markers", "markers"]
    assert layers[0]["config"]["style"]["color"]["field"] == "online"
    assert layers[1]["config"]["style"]["color"]["field"] == "severity"
    assert layers[1]["config"]["style"]["size"]["field"] == "firing"
    assert panel["transformations"] == [{"id": "joinByField",
                                         "options": {"byField": "device", "mode": "outer"}}]
    # a range that starts after every alert fired: open alerts must still show
    tr = TimeRange(city.end_ms - 60_000, city.end_ms)
    with InfluxQLClient(city.url, city.database) as client:
        resolved = resolve(data, client, tr)
        frames = {t["refId"]: [r for s in client.query(interpolate(t["query"], resolved, tr))
                               for r in s.records()] for t in panel["targets"]}
    joined: dict[str, list[dict[str, Any]]] = {}
    for ref in ("A", "B", "C"):  # outer join by device
        for row in frames[ref]:
            joined.setdefault(row["device"], []).append(row)
    engine = create_db_engine(f"sqlite:///{city.run_dir / 'lifeline.db'}")
    try:
        located = {d.id for d in DeviceStore(engine).all() if d.lat is not None
                   and d.lon is not None and d.enabled}
        with engine.connect() as conn:
            firing = {(str(d), str(s)) for d, s in conn.execute(
                sa.select(alerts.c.device_id, alerts.c.severity).where(
                    alerts.c.state == "firing"))}
    finally:
        engine.dispose()
    assert located and firing, "the scenario leaves located devices and open alerts"
    assert {r["device"] for r in frames["A"]} == located
    assert all(r["lat"] is not None and r["lon"] is not None for r in frames["A"])
    assert {r["device"] for r in frames["B"]} <= located
    assert {r["online"] for r in frames["B"]} == {0, 1}  # the offline incident shows red
    assert {(r["device"], r["severity"]) for r in frames["C"]} == firing
    assert all(r["firing"] == 1 for r in frames["C"])
    for device, _ in firing:  # each alert marker has its device's coordinates
        assert any(r.get("lat") is not None for r in joined[device]), device
