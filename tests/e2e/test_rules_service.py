"""``lifeline serve`` with rules: SIGHUP and POST reload keep state, stale ticks, state
saved at shutdown and restored at start (real Mosquitto + InfluxDB, real processes)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices.model import Device
from devices.registry import write_inventory
from devtools.harness import ManagedService, free_port
from lifeline.auth import new_token, token_digest
from tests.support import clean_env, wait_for

pytestmark = pytest.mark.e2e
LIFELINE = [sys.executable, "-m", "lifeline"]
DEVICE = Device("gas-rules-1", "gas_alarm", grid="G1")
RULES_A = """
[[rule]]
id = "slow-level1"
device_types = ["gas_alarm"]
metric = "lel"
above = 25.0
clear = 20.0
for = "5s"
severity = "major"

[[rule]]
id = "quiet"
metric = "lel"
kind = "stale"
after = "2s"
severity = "minor"
"""
RULES_B = """
[[rule]]
id = "lel-zscore"
kind = "zscore"
metric = "lel"
"""




def publish(port: int, ts_ms: int, lel: float) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"r-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    doc = {"ts": ts_ms, "values": {"lel": lel}}
    client.publish(f"lifeline/{DEVICE.id}/telemetry", orjson.dumps(doc), qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_reload_keeps_state_and_state_survives_a_restart(
    tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService
) -> None:
    db = f"rules_{uuid.uuid4().hex[:8]}"
    api_port = free_port()
    viewer, admin = new_token(), new_token()
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "a.toml").write_text(RULES_A)
    write_inventory(tmp_path / "inventory.csv", [DEVICE])
    env = clean_env()
    env.update({
        "LIFELINE_RUN_DIR": str(tmp_path / "run"),
        "LIFELINE_MQTT__PORT": str(mosquitto.info.port),
        "LIFELINE_MQTT__CLIENT_ID": f"serve-{db}",
        "LIFELINE_INFLUX__URL": influxdb.info.url,
        "LIFELINE_INFLUX__DATABASE": db,
        "LIFELINE_DEVICES__INVENTORY": str(tmp_path / "inventory.csv"),
        "LIFELINE_RULES__PATHS": orjson.dumps([str(rules_dir)]).decode(),
        "LIFELINE_RULES__TICK_INTERVAL": "1s",
        "LIFELINE_API__PORT": str(api_port),
        "LIFELINE_API__TOKENS": orjson.dumps([
            {"name": "duty", "role": "viewer", "sha256": token_digest(viewer)},
            {"name": "ops", "role": "admin", "sha256": token_digest(admin)}]).decode(),
    })
    api = f"http://127.0.0.1:{api_port}/api/v1/rules"
    as_viewer = {"Authorization": f"Bearer {viewer}"}
    as_admin = {"Authorization": f"Bearer {admin}"}

    def rules() -> dict[str, Any]:
        resp = httpx.get(api, headers=as_viewer, timeout=5)
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def firing(rule_id: str) -> int:
        return int(next(r["firing"] for r in rules()["data"] if r["id"] == rule_id))

    def start(name: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen([*LIFELINE, "serve"], env=env, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT)
        assert wait_for(lambda: b"serving:" in log.read_bytes(), 30), log.read_text()
        assert wait_for(lambda: _answers(api, as_viewer), 10)
        return proc

    serve = start("serve1")
    try:
        assert [r["id"] for r in rules()["data"]] == ["slow-level1", "quiet"]
        t0 = int(time.time() * 1000)
        publish(mosquitto.info.port, t0, 30.0)  # condition starts; `for` is 5 s
        assert wait_for(lambda: rules()["evaluated_readings"] == 1, 10)
        # stale: no reading for 2 s, evaluated by the 1 s tick
        assert wait_for(lambda: firing("quiet") == 1, 10)
        # SIGHUP with a new file: the changed set is loaded, old rules keep state
        (rules_dir / "b.toml").write_text(RULES_B)
        serve.send_signal(signal.SIGHUP)
        assert wait_for(lambda: rules()["count"] == 3 and rules()["reloads"] == 1, 10)
        assert httpx.post(f"{api}/reload", headers=as_viewer, timeout=5).status_code == 403
        assert httpx.post(f"{api}/reload", timeout=5).status_code == 401
        resp = httpx.post(f"{api}/reload", headers=as_admin, timeout=5)
        assert resp.status_code == 200 and resp.json() == {"kept": 3, "new": 0, "count": 3}
        (rules_dir / "c.toml").write_text('[[rule]]\nid = "bad"\nmetric = "lel"\n')
        resp = httpx.post(f"{api}/reload", headers=as_admin, timeout=5)
        assert resp.status_code == 422
        assert "c.toml: rule 'bad'" in resp.json()["detail"]
        assert rules()["count"] == 3  # the running rules stay
        (rules_dir / "c.toml").unlink()
        # 6 s after the first reading: fires only if the condition start survived reloads
        publish(mosquitto.info.port, t0 + 6000, 31.0)
        assert wait_for(lambda: firing("slow-level1") == 1, 10)
        assert firing("quiet") == 0  # the reading resolved the stale finding
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
    assert (tmp_path / "run" / "rules-state.npz").exists()
    serve = start("serve2")
    try:
        assert firing("slow-level1") == 1  # restored from the state file
        publish(mosquitto.info.port, t0 + 7000, 10.0)
        assert wait_for(lambda: firing("slow-level1") == 0, 10)
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0


def _answers(url: str, headers: dict[str, str]) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
