"""The service's persistent MQTT session against a real Mosquitto.

(a) The broker configuration `lifeline devices mqtt-acl` generates binds client ids to
credentials: a device that connects with the service's client id gets its own id, so
the service's session (and what the broker queued in it) stays whole. Without the
binding the same device wipes it: that is the control case, and the service notices.
(b) The service notices a lost session (the broker restarted without its persistence
file, during a run and while the service was away): counted in the ingest
self-metrics, a WARNING, and the service alert ``service:mqtt_session``, which a
reconnect that finds the session again resolves.
"""

from __future__ import annotations

import csv
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prometheus_client import CollectorRegistry, generate_latest

from devices.model import Device
from devices.mqttacl import AclFiles, write_mqtt_auth
from devices.registry import write_inventory
from devtools.harness import ManagedService, free_port, start_mosquitto
from ingest.batch import RawBuffer
from ingest.subscriber import MqttOptions, MqttSubscriber
from lifeline.cli import main
from lifeline.mqtt_session import SESSION_RULE
from lifeline.service import Service
from lifeline.settings import load_settings
from tests.support import wait_for

pytestmark = pytest.mark.integration

SERVICE = "lifeline-serve"
DEVICE = "gas-1"


def auth_files(tmp_path: Path, port: int) -> tuple[AclFiles, dict[str, str]]:
    files = write_mqtt_auth(tmp_path / "auth", [DEVICE], prefix="lifeline",
                            service_user=SERVICE, listeners=[f"{port} 127.0.0.1"])
    with files.credentials_file.open(newline="") as handle:
        return files, {r["username"]: r["password"] for r in csv.DictReader(handle)}


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Mosquitto with the generated configuration (its own listener on ``port``)."""
    port = free_port()
    files, creds = auth_files(tmp_path, port)
    broker = start_mosquitto(tmp_path / "broker", extra_config=files.config_file.read_text())
    try:
        yield port, creds
    finally:
        broker.stop()


@pytest.fixture
def unbound(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """The same password file and ACL without the client id binding (the old set-up)."""
    files, creds = auth_files(tmp_path, free_port())
    broker = start_mosquitto(tmp_path / "broker", extra_config=(
        f"allow_anonymous false\npassword_file {files.password_file}\n"
        f"acl_file {files.acl_file}\n"))
    try:
        yield broker.info.port, creds
    finally:
        broker.stop()


def subscriber(port: int, creds: dict[str, str],
               expect_session: bool = False) -> tuple[MqttSubscriber, RawBuffer]:
    buffer = RawBuffer()
    sub = MqttSubscriber(MqttOptions(port=port, client_id=SERVICE, username=SERVICE,
                                     password=creds[SERVICE], connect_timeout_s=10,
                                     reconnect_max_s=1, expect_session=expect_session),
                         ["lifeline/+/telemetry"], buffer)
    sub.start()
    assert sub.subscribed.wait(10)
    return sub, buffer


def publish(port: int, creds: dict[str, str], first: int, n: int) -> None:
    """``n`` QoS 1 readings from the device, each acknowledged by the broker."""
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=DEVICE,
                      protocol=MQTTProtocolVersion.MQTTv5)
    pub.username_pw_set(DEVICE, creds[DEVICE])
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(f"lifeline/{DEVICE}/telemetry", b"%d" % i, qos=1)
             for i in range(first, first + n)]
    for info in infos:
        info.wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()


def impostor(port: int, creds: dict[str, str]) -> mqtt.Client:
    """The device's credentials with the service's client id and a clean start."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=SERVICE,
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.username_pw_set(DEVICE, creds[DEVICE])
    accepted = threading.Event()
    client.on_connect = lambda c, u, f, reason, p: None if reason.is_failure else accepted.set()
    client.connect("127.0.0.1", port, clean_start=True)
    client.loop_start()
    assert accepted.wait(10), "the impostor's connection is accepted (under its own id)"
    return client


def received(buffer: RawBuffer, sub: MqttSubscriber, n: int, timeout: float = 10) -> list[int]:
    got: list[int] = []

    def drain() -> bool:
        messages = buffer.drain(10_000)
        sub.ack(messages)
        got.extend(int(m.payload) for m in messages)
        return len(got) >= n

    wait_for(drain, timeout, 0.05)
    time.sleep(0.3)
    drain()
    return sorted(got)


def takeover_while_away(port: int, creds: dict[str, str],
                        timeout: float = 10) -> tuple[MqttSubscriber, list[int]]:
    """The service connects, goes away (its session keeps 300 readings), a device with
    the service's client id connects and leaves, more readings come while the service is
    back, and the device connects again meanwhile: what does the service receive?"""
    sub, buffer = subscriber(port, creds)
    sub.stop()
    publish(port, creds, 0, 300)  # queued in the service's session
    intruder = impostor(port, creds)
    intruder.disconnect()
    intruder.loop_stop()
    sub, buffer = subscriber(port, creds, expect_session=True)  # the session made above
    got = received(buffer, sub, 300, timeout)
    intruder = impostor(port, creds)  # while the service is connected
    time.sleep(0.5)
    publish(port, creds, 300, 100)
    got += received(buffer, sub, 100, timeout)
    intruder.disconnect()
    intruder.loop_stop()
    sub.stop()
    return sub, sorted(got)


def test_generated_config_keeps_devices_off_the_services_session(
        generated: tuple[int, dict[str, str]]) -> None:
    port, creds = generated
    sub, got = takeover_while_away(port, creds)
    assert got == list(range(400)), f"{400 - len(set(got))} readings lost"
    assert sub.connects == 1, "the device's connection disconnected the service"
    assert (sub.sessions_kept, sub.sessions_lost, sub.sessions_taken_over) == (1, 0, 0)


def test_without_the_binding_a_device_wipes_the_session_and_the_subscriber_notices(
        unbound: tuple[int, dict[str, str]], caplog: pytest.LogCaptureFixture) -> None:
    """The control case: the broker lets the device take the service's client id."""
    port, creds = unbound
    caplog.set_level(logging.WARNING, logger="ingest.subscriber")
    sub, got = takeover_while_away(port, creds, timeout=2)
    assert len(got) < 400  # the 300 queued readings went with the wiped session
    assert sub.sessions_lost >= 1 and sub.sessions_kept == 0
    warnings = [r.getMessage() for r in caplog.records if "MQTT session lost" in r.getMessage()]
    assert warnings and f"client id {SERVICE!r} (user {SERVICE!r})" in warnings[0]


# ------------------------------------------------------------------------- the service


def start_service(tmp_path: Path, broker: ManagedService, influxdb: ManagedService,
                  client_id: str) -> tuple[Service, threading.Event, threading.Thread]:
    inventory = tmp_path / "inventory.csv"
    write_inventory(inventory, [Device("gas-s1", "gas_alarm", grid="G1")])
    settings = load_settings(
        None, run_dir=tmp_path / "run",
        mqtt={"port": broker.info.port, "client_id": client_id, "connect_timeout": "10s"},
        influx={"url": influxdb.info.url, "database": "lifeline"},
        ingest={"metrics_interval": "1h", "spool_fsync": False},
        devices={"inventory": str(inventory)}, api={"enabled": False})
    service = Service(settings)
    service.start()
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    assert service.subscriber.subscribed.wait(10)
    return service, stop, thread


def restart_broker(broker: ManagedService, *, keep_sessions: bool) -> None:
    broker.stop()
    if not keep_sessions:
        assert broker.info.data_dir is not None
        (broker.info.data_dir / "mosquitto.db").unlink()
    broker.start()


def alert_state(service: Service, client_id: str) -> str | None:
    with service.db.connect() as conn:
        row = conn.execute(sa.text("SELECT state FROM alerts WHERE fingerprint = :fp"),
                           {"fp": f"{client_id}/{SESSION_RULE}"}).first()
    return str(row[0]) if row else None


def exposition(service: Service) -> str:
    registry = CollectorRegistry()
    registry.register(service.metrics)
    return generate_latest(registry).decode()


def test_service_counts_warns_and_alerts_on_a_lost_session(
        tmp_path: Path, influxdb: ManagedService, caplog: pytest.LogCaptureFixture) -> None:
    broker = start_mosquitto(tmp_path / "broker")
    client_id = f"svc-{uuid.uuid4().hex[:6]}"
    caplog.set_level(logging.INFO)
    service, stop, thread = start_service(tmp_path, broker, influxdb, client_id)
    try:
        lost = service.ingest.sessions_lost
        assert sum(lost.values()) == 0 and alert_state(service, client_id) is None
        # the broker comes back without its sessions: the reconnect finds none
        restart_broker(broker, keep_sessions=False)
        assert wait_for(lambda: lost["not_present"] == 1, 30), dict(lost)
        assert wait_for(lambda: alert_state(service, client_id) == "firing", 10)
        with service.db.connect() as conn:  # about the service: no case for a field unit
            assert conn.execute(sa.text("SELECT case_id FROM alerts WHERE fingerprint = :fp"),
                                {"fp": f"{client_id}/{SESSION_RULE}"}).scalar() is None
            assert conn.execute(sa.text("SELECT count(*) FROM cases")).scalar() == 0
        warning = [r for r in caplog.records if r.levelno == logging.WARNING
                   and r.name == "lifeline.mqtt_session"]
        assert warning and client_id in warning[0].getMessage()
        assert SESSION_RULE in warning[0].getMessage()
        text = exposition(service)
        assert 'lifeline_ingest_mqtt_sessions_lost_total{reason="not_present"} 1.0' in text
        assert 'lifeline_ingest_mqtt_sessions_lost_total{reason="taken_over"} 0.0' in text
        # a restart that keeps the sessions: the session is found, the alert resolves
        restart_broker(broker, keep_sessions=True)
        assert wait_for(lambda: service.subscriber.sessions_kept == 1, 30)
        assert wait_for(lambda: alert_state(service, client_id) == "resolved", 10)
        assert lost["not_present"] == 1
        stop.set()
        thread.join(60)
        # while the service is away the broker loses its sessions: noticed at start-up
        restart_broker(broker, keep_sessions=False)
        service, stop, thread = start_service(tmp_path, broker, influxdb, client_id)
        assert wait_for(lambda: service.ingest.sessions_lost["not_present"] == 1, 10)
        assert wait_for(lambda: alert_state(service, client_id) == "firing", 10)
        stop.set()
        thread.join(60)
        # a normal restart of the service: the session is there, nothing counted
        service, stop, thread = start_service(tmp_path, broker, influxdb, client_id)
        assert wait_for(lambda: alert_state(service, client_id) == "resolved", 10)
        assert sum(service.ingest.sessions_lost.values()) == 0
    finally:
        stop.set()
        thread.join(60)
        broker.stop()


def test_cli_writes_the_broker_configuration_and_names_the_client_id_to_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "lifeline.toml"
    config.write_text('[mqtt]\nclient_id = "lifeline-1"\n', encoding="utf-8")
    monkeypatch.setenv("LIFELINE_CONFIG", str(config))
    monkeypatch.setenv("LIFELINE_RUN_DIR", str(tmp_path / "run"))
    out = tmp_path / "auth"
    assert main(["devices", "mqtt-acl", "--out", str(out), "--listener", "8883",
                 "--certfile", "/etc/mosquitto/s.crt", "--keyfile", "/etc/mosquitto/s.key"]) == 0
    printed = capsys.readouterr()
    conf = (out / "mosquitto.conf").read_text()
    assert "\nlistener 8883\ncertfile /etc/mosquitto/s.crt\nkeyfile /etc/mosquitto/s.key\n" in conf
    assert "use_username_as_clientid true" in conf and f"acl_file {out / 'acl'}" in conf
    assert 'mqtt.client_id = "lifeline-serve"' in printed.out
    assert 'not mqtt.client_id "lifeline-1"' in printed.err  # the session moves: said so
    assert main(["devices", "mqtt-acl", "--out", str(out), "--certfile", "x.crt"]) == 2
