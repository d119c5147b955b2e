"""Secrets are never logged nor returned: ``lifeline serve`` at DEBUG (text and JSON logs)
with a webhook secret, InfluxDB password and token, MQTT password, Grafana token and an
API token configured, exercised over MQTT and every read route of the API; then
``config check``. No secret string may appear in the logs, an API response or the CLI's
output."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from alerts.delivery.signing import sign_callback
from devtools.harness import ManagedService
from devtools.receiver import WebhookReceiver
from lifeline.auth import new_token, token_digest
from tests.support import clean_env, wait_for

pytestmark = pytest.mark.e2e
LIFELINE = [sys.executable, "-m", "lifeline"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_in_logs_responses_or_config_output(
        tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService,
        log_format: str) -> None:
    tag = uuid.uuid4().hex[:10]
    secrets = {
        "LIFELINE_WEBHOOK__SECRET": f"whsec-{tag}-0123456789",
        "LIFELINE_INFLUX__PASSWORD": f"influxpw-{tag}",
        "LIFELINE_INFLUX__TOKEN": f"influxtok-{tag}",
        "LIFELINE_MQTT__PASSWORD": f"mqttpw-{tag}",
        "LIFELINE_GRAFANA__TOKEN": f"grafanatok-{tag}",
    }
    api_token = new_token()
    hidden = [*secrets.values(), api_token]
    receiver = WebhookReceiver(secrets["LIFELINE_WEBHOOK__SECRET"]).start()
    inventory = tmp_path / "inventory.csv"
    inventory.write_text("id,type\ngas-00001,gas_alarm\n")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "gas-high"\ndevice_types = ["gas_alarm"]\nmetric = "lel"\n'
                     'above = 50.0\nclear = 45.0\nseverity = "critical"\n')
    prefix = f"x{tag}"
    port = free_port()
    env = clean_env()
    env.update(secrets)
    env.update({
        "LIFELINE_RUN_DIR": str(tmp_path / "run"),
        "LIFELINE_LOG_FORMAT": log_format,
        "LIFELINE_MQTT__PORT": str(mosquitto.info.port),
        "LIFELINE_MQTT__PREFIX": prefix,
        "LIFELINE_MQTT__CLIENT_ID": f"secrets-{tag}",
        "LIFELINE_MQTT__USERNAME": "lifeline",
        "LIFELINE_INFLUX__URL": influxdb.info.url,
        "LIFELINE_INFLUX__DATABASE": f"sec_{tag}",
        "LIFELINE_INFLUX__USERNAME": "lifeline",
        "LIFELINE_DEVICES__INVENTORY": str(inventory),
        "LIFELINE_RULES__PATHS": orjson.dumps([str(rules)]).decode(),
        "LIFELINE_WEBHOOK__URL": receiver.url,
        "LIFELINE_API__PORT": str(port),
        "LIFELINE_API__TOKENS": orjson.dumps([{"name": "ops", "role": "admin",
                                               "sha256": token_digest(api_token)}]).decode(),
    })
    outputs: list[str] = []
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen([*LIFELINE, "--log-level", "DEBUG", "serve"], env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: b"serving:" in log_path.read_bytes(), 30), log_path.read_text()
        assert wait_for(lambda: _up(base), 20)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2)
        pub.username_pw_set("gas-00001", secrets["LIFELINE_MQTT__PASSWORD"])
        pub.connect("127.0.0.1", mosquitto.info.port)
        pub.loop_start()
        for payload in (b'{"values": {"lel": 3.0}}', b"{not json", b'{"values": {"lel": 80}}'):
            pub.publish(f"{prefix}/gas-00001/telemetry", payload, qos=1).wait_for_publish(5)
        pub.disconnect()
        auth = {"Authorization": f"Bearer {api_token}"}
        with httpx.Client(base_url=base, timeout=10) as client:
            assert wait_for(lambda: client.get("/api/v1/dlq", headers=auth).json()["count"] > 0)
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/api/v1/devices",
                         "/api/v1/devices/gas-00001", "/api/v1/devices/gas-00001/latest",
                         "/api/v1/rules", "/api/v1/alerts", "/api/v1/cases",
                         "/api/v1/deliveries", "/api/v1/silences", "/api/v1/dlq",
                         "/api/v1/kpi?start=2020-01-01T00:00:00Z"):
                resp = client.get(path, headers=auth)
                assert resp.status_code == 200, (path, resp.text)
                outputs.append(resp.text)
            outputs.append(client.post("/api/v1/rules/reload", headers=auth).text)
            # a secret presented as a token, a bad signature and a good one: never echoed
            for header in (secrets["LIFELINE_WEBHOOK__SECRET"], api_token[:-2]):
                resp = client.get("/api/v1/alerts", headers={"Authorization": f"Bearer {header}"})
                assert resp.status_code == 401
                outputs.append(resp.text)
            body = b'{"action": "accept"}'
            ts = str(int(time.time()))
            for sig, codes in (("sha256=00", {401}),
                               (sign_callback(secrets["LIFELINE_WEBHOOK__SECRET"], "POST",
                                             "/api/v1/cases/1/actions", "", ts, body),
                                {200, 404, 409})):
                resp = client.post("/api/v1/cases/1/actions", content=body, headers={
                    "X-Lifeline-Timestamp": ts, "X-Lifeline-Signature": sig})
                assert resp.status_code in codes, resp.text
                outputs.append(resp.text)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        receiver.stop()
    logs = log_path.read_text("utf-8", errors="replace")
    assert "DEBUG" in logs  # the run really logged at DEBUG
    if log_format == "json":
        assert all(line.startswith("{") for line in logs.splitlines() if line.strip()), logs[:500]
    if log_format == "text":  # the CLI's own output, once
        check = subprocess.run([*LIFELINE, "config", "check"], env=env, capture_output=True,
                               text=True, check=False)
        assert check.returncode == 0, check.stderr
        assert orjson.loads(check.stdout)["webhook"]["secret"] == "********"
        bad = subprocess.run([*LIFELINE, "config", "check"],
                             env={**env, "LIFELINE_MQTT__PORT": "70000"},
                             capture_output=True, text=True, check=False)
        assert bad.returncode == 2 and "mqtt.port" in bad.stderr
        outputs += [check.stdout, check.stderr, bad.stdout, bad.stderr]
    leaked = [s for s in hidden if s in "\n".join([logs, *outputs])]
    assert leaked == []


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
