"""Generated Mosquitto password file and ACL, enforced by a real Mosquitto."""

from __future__ import annotations

import csv
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from devices.mqttacl import AclError, hash_password, verify_password, write_mqtt_auth
from devtools.harness import ManagedService, start_mosquitto

pytestmark = pytest.mark.integration

DEVICES = ["gas-1", "gas-2", "wp.3"]


class Client:
    """A paho MQTT 5 client recording CONNACK, PUBACK reason codes and messages."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{time.time()}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.username_pw_set(user, password)
        self.connack: list[str] = []
        self.pubacks: dict[int, str] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.suback = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: self.connack.append(str(r))
        self.client.on_publish = lambda c, u, mid, r, p: self.pubacks.__setitem__(mid, str(r))
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = lambda *a: self.suback.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.connack and time.monotonic() < deadline:
            time.sleep(0.02)

    def publish(self, topic: str, payload: str) -> str:
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + 10
        while info.mid not in self.pubacks and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.pubacks.get(info.mid, "no PUBACK")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[ManagedService, dict[str, str]]]:
    files = write_mqtt_auth(tmp_path / "auth", DEVICES, prefix="lifeline",
                            service_user="lifeline-serve")
    with files.credentials_file.open(newline="") as handle:
        creds = {r["username"]: r["password"] for r in csv.DictReader(handle)}
    broker = start_mosquitto(tmp_path / "broker", extra_config=(
        "allow_anonymous false\n"
        f"password_file {files.password_file}\n"
        f"acl_file {files.acl_file}\n"))
    try:
        yield broker, creds
    finally:
        broker.stop()


def test_a_device_may_publish_only_under_its_own_topics(
        secured: tuple[ManagedService, dict[str, str]]) -> None:
    broker, creds = secured
    port = broker.info.port
    service = Client(port, "lifeline-serve", creds["lifeline-serve"])
    assert service.connack == ["Success"]
    service.client.subscribe("lifeline/#", qos=1)
    assert service.suback.wait(5)
    gas1 = Client(port, "gas-1", creds["gas-1"])
    assert gas1.connack == ["Success"]
    gas1.client.subscribe("lifeline/#", qos=1)
    assert gas1.publish("lifeline/gas-2/telemetry", '{"values": {"lel": 99}}') \
        == "Not authorized"
    assert gas1.publish("lifeline/gas-1telemetry", "x") == "Not authorized"
    assert gas1.publish("other/gas-1/telemetry", "x") == "Not authorized"
    wp3 = Client(port, "wp.3", creds["wp.3"])
    assert wp3.publish("lifeline/wp.3/telemetry", '{"values": {"pressure": 0.3}}') == "Success"
    assert wp3.publish("lifeline/gas-1/event", "forged") == "Not authorized"
    gas1_again = Client(port, "gas-1", creds["gas-1"])
    assert gas1_again.publish("lifeline/gas-1/telemetry", '{"values": {"lel": 1}}') == "Success"
    deadline = time.monotonic() + 5
    while len(service.messages) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert sorted(t for t, _ in service.messages) == [
        "lifeline/gas-1/telemetry", "lifeline/wp.3/telemetry"]
    assert gas1.messages == [] and gas1_again.messages == []  # devices read nothing
    # the service account may not publish as a device
    assert service.publish("lifeline/gas-1/telemetry", "x") == "Not authorized"
    # wrong password, unknown user, anonymous: refused
    assert Client(port, "gas-1", "wrong").connack == ["Not authorized"]
    assert Client(port, "nobody", "x").connack == ["Not authorized"]
    anon = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    codes: list[str] = []
    anon.on_connect = lambda c, u, f, r, p: codes.append(str(r))
    anon.connect("127.0.0.1", port)
    anon.loop_start()
    deadline = time.monotonic() + 5
    while not codes and time.monotonic() < deadline:
        time.sleep(0.02)
    anon.loop_stop()
    assert codes == ["Not authorized"]
    for c in (service, gas1, wp3, gas1_again):
        c.close()


def test_rerun_keeps_passwords_and_adds_new_devices(tmp_path: Path) -> None:
    out = tmp_path / "auth"
    first = write_mqtt_auth(out, ["a-1"], prefix="city/lifeline", service_user="svc",
                            service_password="service-secret")
    assert (first.users, first.new_users) == (2, 1)
    before = first.credentials_file.read_text()
    second = write_mqtt_auth(out, ["a-1", "b-2"], prefix="city/lifeline", service_user="svc")
    assert (second.users, second.new_users) == (3, 1)
    after = second.credentials_file.read_text()
    assert before.splitlines()[1:] == after.splitlines()[1:3]
    assert oct(second.credentials_file.stat().st_mode & 0o777) == "0o600"
    assert oct(second.password_file.stat().st_mode & 0o777) == "0o600"
    acl = second.acl_file.read_text()
    assert "user svc\ntopic read city/lifeline/#" in acl
    assert "user b-2\ntopic write city/lifeline/b-2/#" in acl
    for bad in ({"device_ids": ["bad id"]}, {"device_ids": ["svc"]},
                {"device_ids": [], "prefix": "a/#"}, {"device_ids": [], "service_user": "a b"}):
        kwargs = {"prefix": "lifeline", "service_user": "svc"} | bad
        with pytest.raises(AclError):
            write_mqtt_auth(out, **kwargs)  # type: ignore[arg-type]


def test_hashes_match_mosquitto_passwd(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(path), "dev", "s3cret"], check=True)
    hashed = path.read_text().strip().split(":", 1)[1]
    assert verify_password("s3cret", hashed)
    assert not verify_password("other", hashed)
    ours = hash_password("s3cret")
    assert ours.startswith("$7$101$") and verify_password("s3cret", ours)
