"""End to end through the CLI: real Mosquitto + InfluxDB, `serve` + `simulate` processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devtools.harness import ManagedService
from devtools.receiver import WebhookReceiver
from lifeline.influxquery import count_values, influxql
from tests.support import clean_env, wait_for

pytestmark = pytest.mark.e2e
SECRET = "e2e-secret-0123456789"
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


def cli_env(tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService, db: str,
            hook_url: str) -> dict[str, str]:
    env = clean_env()
    rules = tmp_path / "rules.toml"
    rules.write_text(RULE)
    env.update({
        "LIFELINE_RUN_DIR": str(tmp_path / "run"),
        "LIFELINE_MQTT__PORT": str(mosquitto.info.port),
        "LIFELINE_MQTT__CLIENT_ID": f"serve-{db}",
        "LIFELINE_INFLUX__URL": influxdb.info.url,
        "LIFELINE_INFLUX__DATABASE": db,
        "LIFELINE_DEVICES__INVENTORY": str(tmp_path / "inventory.csv"),
        "LIFELINE_RULES__PATHS": orjson.dumps([str(rules)]).decode(),
        "LIFELINE_WEBHOOK__URL": hook_url,
        "LIFELINE_WEBHOOK__SECRET": SECRET,
        "LIFELINE_API__PORT": "0",
    })
    return env




def test_serve_and_simulate_store_everything_alert_once_and_dead_letter_garbage(
    tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService
) -> None:
    db = f"e2e_{uuid.uuid4().hex[:8]}"
    receiver = WebhookReceiver(SECRET).start()
    env = cli_env(tmp_path, mosquitto, influxdb, db, receiver.url)
    subprocess.run([*LIFELINE, "simulate", "--devices", "20", "--inventory",
                    str(tmp_path / "inventory.csv")], env=env, check=True, capture_output=True)
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen([*LIFELINE, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: b"serving:" in (tmp_path / "serve.log").read_bytes(), 20)
        sim = subprocess.Popen(
            [*LIFELINE, "simulate", "--devices", "20", "--rate", "400", "--duration", "8",
             "--drift-after", "1", "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        time.sleep(3)
        bad = mqtt.Client(CallbackAPIVersion.VERSION2)
        bad.connect("127.0.0.1", mosquitto.info.port)
        bad.loop_start()
        bad.publish("lifeline/gas-00002/telemetry", b"{this is not json", qos=1).wait_for_publish(5)
        bad.disconnect()
        bad.loop_stop()
        out, errs = sim.communicate(timeout=60)
        assert sim.returncode == 0, errs.decode()
        published = orjson.loads(out)
        assert published["values"] > 8000
        stored = lambda: count_values(influxdb.info.url, db, ["gas_alarm", "water_pressure"])  # noqa: E731
        wait_for(lambda: stored() >= published["values"], 30)
        assert stored() == published["values"]
        for kind, values in published["values_by_type"].items():
            assert count_values(influxdb.info.url, db, [kind]) == values
        assert wait_for(lambda: receiver.events("alert.firing"), 10)
        time.sleep(1)
        firing = receiver.events("alert.firing")
        assert len(firing) == 1
        assert firing[0].body["alert"]["device"] == published["drift_device"]
        assert firing[0].body["alert"]["rule"] == "gas-lel-level2"
        assert firing[0].signature_valid and receiver.log.bad_signatures == 0
        alerts = influxql(influxdb.info.url, db, "SELECT count(firing) FROM lifeline_alert")
        assert alerts[0]["values"][0][1] == 1
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=30)
        receiver.stop()
    assert code == 0
    dlq = subprocess.run([*LIFELINE, "dlq", "list", "--json"], env=env, check=True,
                         capture_output=True).stdout.decode().splitlines()
    letters = [orjson.loads(line) for line in dlq]
    assert [(d["topic"], d["reason"]) for d in letters] == [
        ("lifeline/gas-00002/telemetry", "not_json")]


def test_serve_reports_unreachable_broker_without_traceback(tmp_path: Path,
                                                            influxdb: ManagedService) -> None:
    env = clean_env()
    env.update({"LIFELINE_RUN_DIR": str(tmp_path), "LIFELINE_MQTT__PORT": "1",
                "LIFELINE_API__PORT": "0", "LIFELINE_MQTT__CONNECT_TIMEOUT": "2s",
                "LIFELINE_INFLUX__URL": influxdb.info.url})
    proc = subprocess.run([*LIFELINE, "serve"], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert "MQTT broker 127.0.0.1:1 unreachable" in err
    assert "retrying" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("env_extra", "files", "message"),
    [
        ({"LIFELINE_MQTT__QOS": "7"}, {}, "mqtt.qos"),
        ({"LIFELINE_RULES__PATHS": '["missing.toml"]'}, {}, "missing.toml: rule file not found"),
        ({"LIFELINE_RULES__PATHS": '["bad.toml"]'}, {"bad.toml": "[[rule]\n"}, "bad.toml: TOML"),
        ({"LIFELINE_INFLUX__URL": "http://127.0.0.1:1", "LIFELINE_MQTT__CONNECT_TIMEOUT": "1s"},
         {}, "InfluxDB at http://127.0.0.1:1 unreachable"),
    ],
)
def test_serve_start_up_errors_are_clear(tmp_path: Path, env_extra: dict[str, str],
                                         files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = clean_env()
    env.update({"LIFELINE_RUN_DIR": str(tmp_path / "run"), "LIFELINE_API__PORT": "0", **env_extra})
    proc = subprocess.run([*LIFELINE, "serve"], env=env, capture_output=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode in (2, 3)
    assert message in proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()


def test_config_check_prints_masked_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[webhook]\nurl = "http://x/y"\nsecret = "very-secret-value-123"\n')
    env = clean_env()
    ok = subprocess.run([*LIFELINE, "--config", str(cfg), "config", "check"], env=env,
                        capture_output=True, check=True)
    shown = orjson.loads(ok.stdout)
    assert shown["webhook"]["secret"] == "********"
    assert b"very-secret-value-123" not in ok.stdout
    cfg.write_text("[influx]\nbatch_lines = -1\n")
    bad = subprocess.run([*LIFELINE, "--config", str(cfg), "config", "check"], env=env,
                         capture_output=True)
    assert bad.returncode == 2
    assert b"influx.batch_lines" in bad.stderr
