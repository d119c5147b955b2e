"""`lifeline simulate --scenario` into a running wall-clock service: re-based dates by
default, and what the service dead-lettered is reported (real Mosquitto, InfluxDB, serve)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from devtools.harness import ManagedService
from tests.support import clean_env, wait_for

pytestmark = pytest.mark.e2e
LIFELINE = [sys.executable, "-m", "lifeline"]
SCENARIO = """
[scenario]
name = "tiny-dated"
seed = 3
start = "2026-03-02T08:00:00+08:00"
duration = "10m"

[fleet]
districts = 1
grids = 1
devices = { gas_alarm = 4 }
intervals = { gas_alarm = "60s" }
"""


def _simulate(env: dict[str, str], scenario: Path, *extra: str) -> tuple[dict[str, object], str]:
    proc = subprocess.run([*LIFELINE, "simulate", "--scenario", str(scenario), "--speed", "0",
                           "--mode", "gateway", "--json", "--settle", "20", *extra],
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    doc: dict[str, object] = orjson.loads(proc.stdout)  # stdout is the JSON, nothing else
    return doc, proc.stderr.decode()


def test_simulate_rebases_to_now_and_reports_what_the_service_dead_lettered(
        tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    env = clean_env()
    env.update({
        "LIFELINE_RUN_DIR": str(tmp_path / "run"),
        "LIFELINE_MQTT__PORT": str(mosquitto.info.port),
        "LIFELINE_MQTT__CLIENT_ID": f"serve-{uuid.uuid4().hex[:6]}",
        "LIFELINE_INFLUX__URL": influxdb.info.url,
        "LIFELINE_INFLUX__DATABASE": f"sim_{uuid.uuid4().hex[:8]}",
        "LIFELINE_DEVICES__INVENTORY": str(tmp_path / "inventory.csv"),
        "LIFELINE_API__PORT": "0",
    })
    subprocess.run([*LIFELINE, "simulate", "--scenario", str(scenario), "--inventory",
                    str(tmp_path / "inventory.csv")], env=env, check=True, capture_output=True)
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([*LIFELINE, "serve"], env=env, stdout=log.open("wb"),
                             stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: b"serving:" in log.read_bytes(), 30), log.read_text()
        # the scenario's own dates (March) are months behind: warned, and counted as rejected
        kept, errs = _simulate(env, scenario, "--keep-dates")
        assert "beyond ingest.max_past = 30d" in errs and "ts_past" in errs
        assert kept["start"] == "2026-03-02T00:00:00+00:00"
        assert kept["failed"] == 0 and kept["messages"] == 40
        assert kept["dead_letters_from"] == "database"
        assert kept["dead_lettered"] == {"ts_past": 40}
        assert "the service dead-lettered 40 messages" in errs
        # by default the run is re-based to now: nothing is rejected, nothing warned
        now = time.time()
        rebased, errs = _simulate(env, scenario)
        assert "warning" not in errs, errs
        assert rebased["dead_lettered"] == {}
        assert rebased["messages"] == 40
        start = str(rebased["start"])
        assert abs(datetime.fromisoformat(start).timestamp() - (now - 600)) < 30
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
