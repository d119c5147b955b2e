"""End to end through ``lifeline serve``: a gas fault → rule → alert → case → webhook →
simulated dispatch (accept, handled) → automatic verification → closed, KPIs updated; and
webhook deliveries that survive a SIGKILL of the service."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices.model import Device
from devices.registry import write_inventory
from devtools.harness import ManagedService, free_port
from lifeline.auth import new_token, token_digest
from lifeline.influxquery import influxql
from simulators.city import write_city_inventory
from simulators.dispatch import DispatchPlan, DispatchSimulator
from simulators.runner import RunnerOptions, run_fleet
from simulators.scenario import parse_scenario
from simulators.stream import CityRun
from tests.integration.test_alerts_outbox import FlakyReceiver
from tests.support import clean_env, wait_for

pytestmark = pytest.mark.e2e
SECRET = "outbox-secret-0123456789"  # the FlakyReceiver's
LIFELINE = [sys.executable, "-m", "lifeline"]
RULE = """
[[rule]]
id = "gas-lel-level2"
device_types = ["gas_alarm"]
metric = "lel"
above = 50.0
clear = 45.0
severity = "critical"
"""
DEVICE = Device("gas-e2e-1", "gas_alarm", grid="G7", district="D1", unit="燃气公司")




def serve_env(tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService, db: str,
              hook_url: str, api_port: int, token: str) -> dict[str, str]:
    env = clean_env()
    (tmp_path / "rules.toml").write_text(RULE)
    write_inventory(tmp_path / "inventory.csv", [DEVICE])
    env.update({
        "LIFELINE_RUN_DIR": str(tmp_path / "run"),
        "LIFELINE_MQTT__PORT": str(mosquitto.info.port),
        "LIFELINE_MQTT__CLIENT_ID": f"serve-{db}",
        "LIFELINE_INFLUX__URL": influxdb.info.url,
        "LIFELINE_INFLUX__DATABASE": db,
        "LIFELINE_DEVICES__INVENTORY": str(tmp_path / "inventory.csv"),
        "LIFELINE_RULES__PATHS": orjson.dumps([str(tmp_path / "rules.toml")]).decode(),
        "LIFELINE_WEBHOOK__URL": hook_url,
        "LIFELINE_WEBHOOK__SECRET": SECRET,
        "LIFELINE_WEBHOOK__TIMEOUT": "1",
        "LIFELINE_WEBHOOK__BASE_DELAY": "0.2",
        "LIFELINE_WEBHOOK__MAX_DELAY": "1",
        "LIFELINE_API__PORT": str(api_port),
        "LIFELINE_API__TOKENS": orjson.dumps([{"name": "duty", "role": "viewer",
                                               "sha256": token_digest(token)}]).decode(),
        "LIFELINE_ALERTS__RESOLVE_DELAY": "1s",
        "LIFELINE_ALERTS__TICK_INTERVAL": "0.2",
        "LIFELINE_CASES__VERIFY_AFTER": "3s",
        "LIFELINE_CASES__KPI_INTERVAL": "1s",
    })
    return env


def publish_fault(port: int, stop: threading.Event, high_for_s: float = 1.5) -> None:
    """Readings of one gas alarm: normal, a leak above level 2, then normal again."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fault-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.monotonic()
    seq = 0
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - started
            lel = 62.0 if 1.0 <= elapsed < 1.0 + high_for_s else 4.0
            seq += 1
            doc = {"ts": int(time.time() * 1000), "seq": seq, "values": {"lel": lel}}
            client.publish(f"lifeline/{DEVICE.id}/telemetry", orjson.dumps(doc), qos=1)
            stop.wait(0.2)
    finally:
        client.disconnect()
        client.loop_stop()


SCENARIO = """
[scenario]
name = "e2e-gas-rupture"
seed = 3
duration = "40s"
[fleet]
districts = 1
grids = 1
devices = { gas_alarm = 2 }
intervals = { gas_alarm = "1s" }
[[incident]]
kind = "gas_rupture"
at = "2s"
duration = "2s"
device = "ga-00000"
"""


def simulated_rupture(tmp_path: Path) -> CityRun:
    """A gas rupture from the simulator, starting now, and its city's inventory."""
    run = CityRun(parse_scenario(SCENARIO, source="e2e"), start_s=time.time() + 1.0)
    write_city_inventory(run.layout, tmp_path / "inventory.csv")
    return run


PREFIX = f"caseloop{uuid.uuid4().hex[:6]}"  # its own topics: the broker is shared


def run_simulator(run: CityRun, port: int) -> None:
    """The simulator's own fleet runner, in real time, one connection per device; then
    clear the retained status messages it leaves, so no later test sees them."""
    run_fleet(run, RunnerOptions(port=port, prefix=PREFIX, speed=1.0, mode="devices"))
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    for dev in run.layout.devices:
        client.publish(f"{PREFIX}/{dev.id}/status", b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def start_serve(tmp_path: Path, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen([*LIFELINE, "serve"], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    assert wait_for(lambda: b"serving:" in log.read_bytes(), 30), log.read_text()
    return proc


def test_fault_to_closed_case_through_simulated_dispatch(
    tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService
) -> None:
    db = f"loop_{uuid.uuid4().hex[:8]}"
    api_port = free_port()
    token = new_token()
    sim = DispatchSimulator(SECRET, f"http://127.0.0.1:{api_port}",
                            DispatchPlan(accept_after_s=0.5, handle_after_s=1.5, return_rate=0,
                                         late_rate=0)).start()
    env = serve_env(tmp_path, mosquitto, influxdb, db, sim.url, api_port, token)
    env["LIFELINE_MQTT__PREFIX"] = PREFIX
    simulated_rupture(tmp_path)  # the simulated city's inventory replaces the test device
    serve = start_serve(tmp_path, env, "serve")
    run = simulated_rupture(tmp_path)  # same city (seeded), its clock starting now
    device = run.layout.by_id[run.truth[0].devices[0]].device
    stop = threading.Event()
    fault = threading.Thread(target=run_simulator, args=(run, mosquitto.info.port))
    fault.start()
    api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}",
                       headers={"Authorization": f"Bearer {token}"})

    def closed() -> list[dict]:  # type: ignore[type-arg]
        try:
            r = api.get("/api/v1/cases", params={"state": "closed"})
        except httpx.HTTPError:  # the API thread may still be starting
            return []
        return r.json()["data"] if r.status_code == 200 else []

    try:
        assert wait_for(closed, 60), (tmp_path / "serve.log").read_text()[-3000:]
        (case,) = closed()
        detail = api.get(f"/api/v1/cases/{case['id']}").json()
        history = [(h["action"], h["actor"]) for h in detail["history"]]
        # the device's own alarm joins the case opened by the rule: one "alert" entry
        assert [a for a, _ in history].count("alert") == 1
        actions = [(a, who) for a, who in history if a != "alert"]
        assert [a for a, _ in actions] == ["report", "register", "dispatch", "accept",
                                           "handled", "verify", "close"]
        assert actions[3][1] == "dispatch:sim-unit" and actions[5][1] == "auto-verify"
        assert case["grid"] == device.grid and case["device"] == device.id
        assert case["unit"] == device.unit  # routed to the device's responsible unit
        assert case["external_id"] == f"CG-{case['id']:06d}" and case["handled_on_time"]
        kpi = api.get("/api/v1/kpi", params={"start": "2020-01-01T00:00:00Z"}).json()["data"][0]
        assert (kpi["registered"], kpi["handled"], kpi["closed"]) == (1, 1, 1)
        assert kpi["close_rate"] == 1.0 and kpi["disposal_rate"] == 1.0
        assert kpi["mean_close_s"] > kpi["mean_handle_s"] > kpi["mean_dispatch_s"] > 0
        assert wait_for(lambda: sim.events("case.closed"), 15)
        events = [e.event for e in sim.events()]
        for name in ("alert.firing", "alert.resolved", "case.reported", "case.dispatched",
                     "case.closed"):
            assert name in events, events
        # the level-2 rule and the alarm's own level-2 event: two alerts, one case
        assert sorted(e.body["alert"]["rule"] for e in sim.events()
                      if e.event == "alert.firing") == ["event:alarm", "gas-lel-level2"]
        assert sim.stats.bad_signatures == 0 and sim.stats.callbacks_failed == 0
        assert (sim.stats.accepted, sim.stats.handled) == (1, 1)

        def influx_closed() -> bool:
            rows = influxql(influxdb.info.url, db,
                            "SELECT count(case_id) FROM lifeline_case WHERE \"state\" = 'closed'")
            return bool(rows) and rows[0]["values"][0][1] >= 1

        assert wait_for(influx_closed, 20)
        def kpi_close_rate() -> float | None:
            rows = influxql(influxdb.info.url, db,
                            "SELECT last(close_rate) FROM lifeline_kpi WHERE scope = 'all'")
            return rows[0]["values"][0][1] if rows else None

        assert wait_for(lambda: kpi_close_rate() == 1.0, 20)  # written every kpi_interval
    finally:
        stop.set()
        fault.join()
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=60)
        sim.stop()
        api.close()
    assert code == 0


def test_deliveries_survive_sigkill_mid_delivery(
    tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService
) -> None:
    db = f"kill_{uuid.uuid4().hex[:8]}"
    rx = FlakyReceiver(default=503, hang_s=3.0)
    env = serve_env(tmp_path, mosquitto, influxdb, db, rx.url, free_port(), new_token())
    env["LIFELINE_WEBHOOK__MAX_ATTEMPTS"] = "1000"  # nothing may be dead-lettered here
    sqlite_path = tmp_path / "run" / "lifeline.db"

    def outbox() -> list[tuple[str, str, int]]:
        try:
            with sqlite3.connect(sqlite_path, timeout=5) as conn:
                return list(conn.execute(
                    "SELECT delivery_id, status, attempts FROM webhook_outbox"))
        except sqlite3.Error:
            return []

    def piled_up_in_order() -> bool:
        """At least 4 events wait; the first of each case (or alert) has been tried, the
        later ones of a case wait behind it untried (events of a case go in order)."""
        try:
            with sqlite3.connect(sqlite_path, timeout=5) as conn:
                rows = list(conn.execute("SELECT order_key, attempts FROM webhook_outbox "
                                         "WHERE status = 'pending' ORDER BY id"))
        except sqlite3.Error:
            return False
        seen: set[str] = set()
        ok = len(rows) >= 4
        for key, attempts in rows:
            ok = ok and (attempts >= 1 if key not in seen else attempts == 0)
            seen.add(key)
        return ok and len(seen) < len(rows)

    serve = start_serve(tmp_path, env, "serve1")
    stop = threading.Event()
    fault = threading.Thread(target=publish_fault, args=(mosquitto.info.port, stop, 30.0))
    fault.start()
    try:
        # the receiver fails: events pile up in the outbox, the first of each case tried
        assert wait_for(piled_up_in_order, 40)
        rx.default = "hang"  # now requests hang past the client timeout ...
        assert wait_for(lambda: rx.active >= 1, 20)
        serve.send_signal(signal.SIGKILL)  # ... and the service dies mid-delivery
        serve.wait(timeout=10)
        before = outbox()
        assert before and all(s == "pending" for _, s, _ in before)
        rx.default = 200
        serve = start_serve(tmp_path, env, "serve2")
        assert wait_for(lambda: all(s == "delivered" for _, s, _ in outbox()), 60)
        assert wait_for(lambda: rx.active == 0, 10)
    finally:
        stop.set()
        fault.join()
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
        rx.close()
    ids = [d for d, _, _ in outbox()]
    assert {d for d, _, _ in before} <= set(ids)
    accepted = rx.ids()
    assert sorted(accepted) == sorted(ids)  # every delivery id arrived, exactly once
    assert len(accepted) == len(set(accepted))
    assert rx.duplicates >= 1  # the one in flight at the kill was re-sent with the same id
    assert rx.bad_signatures == 0
    with sqlite3.connect(sqlite_path) as conn:  # each case's events arrived in outbox order
        place = {d: (k, i) for i, d, k in conn.execute(
            "SELECT id, delivery_id, order_key FROM webhook_outbox")}
    by_key: dict[str, list[int]] = {}
    for d in accepted:
        by_key.setdefault(place[d][0], []).append(place[d][1])
    assert all(v == sorted(v) for v in by_key.values())
