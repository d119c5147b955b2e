"""Online/offline with a real Mosquitto, a real InfluxDB and the real service.

Simulated devices are paho clients with a retained ``offline`` will on their
status topic. Killing a device's connection without DISCONNECT makes the broker
publish its will; stopping the broker itself must not mark the fleet offline.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from devices.model import Device
from devices.registry import write_inventory
from devices.status import Change, LinkStatus
from devtools.harness import ManagedService, start_mosquitto
from lifeline.influxquery import influxql
from lifeline.service import Service
from lifeline.settings import load_settings

pytestmark = pytest.mark.integration


class SimDevice:
    """A device: retained online on connect, a will, telemetry every ``period`` seconds."""

    def __init__(self, device_id: str, port: int, period: float = 0.3) -> None:
        self.id = device_id
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{device_id}",
                                  protocol=MQTTProtocolVersion.MQTTv311)
        self.client.will_set(f"lifeline/{device_id}/status", "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.period = period
        self._stop = threading.Event()
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.publish(f"lifeline/{self.id}/status",
                       json.dumps({"state": "online", "fw": "1.4.2", "rssi": -70}),
                       qos=1, retain=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            payload = {"ts": int(time.time() * 1000), "values": {"lel": 1.0, "battery": 3.6}}
            self.client.publish(f"lifeline/{self.id}/telemetry", json.dumps(payload), qos=0)

    def event(self, body: dict[str, object]) -> None:
        self.client.publish(f"lifeline/{self.id}/event", json.dumps(body), qos=1)

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes the will."""
        self._stop.set()
        self.client.loop_stop()  # stops the network thread, sends nothing
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ManagedService]:
    """A private broker: these tests stop and kill connections."""
    service = start_mosquitto(tmp_path / "broker")
    try:
        yield service
    finally:
        service.stop()


def start_service(tmp_path: Path, broker: ManagedService, influxdb: ManagedService,
                  inventory: Path, client_id: str) -> tuple[Service, threading.Event,
                                                            threading.Thread]:
    settings = load_settings(
        None, run_dir=tmp_path / "run",
        mqtt={"port": broker.info.port, "client_id": client_id, "keepalive": 5,
              "connect_timeout": "10s"},
        influx={"url": influxdb.info.url, "database": "lifeline"},
        devices={"inventory": str(inventory), "holdoff": "3s", "will_grace": "1s",
                 "check_interval": "0.2s"},
        api={"enabled": False})
    service = Service(settings)
    service.start()
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    return service, stop, thread


def write_fleet(tmp_path: Path, n: int = 4) -> tuple[Path, list[str]]:
    ids = [f"gas-{uuid.uuid4().hex[:8]}" for _ in range(n)]
    inventory = tmp_path / "inventory.csv"
    write_inventory(inventory, [Device(i, "gas_alarm", grid="G1", district="d", unit="gasco",
                                       interval_s=1.0) for i in ids])  # offline after 3 s
    return inventory, ids


@pytest.fixture
def running(tmp_path: Path, broker: ManagedService, influxdb: ManagedService
            ) -> Iterator[tuple[Service, list[SimDevice]]]:
    inventory, ids = write_fleet(tmp_path)
    service, stop, thread = start_service(tmp_path, broker, influxdb, inventory,
                                          f"svc-{uuid.uuid4().hex[:6]}")
    devices = [SimDevice(i, broker.info.port) for i in ids]
    try:
        yield service, devices
    finally:
        for d in devices:
            d.close()
        stop.set()
        thread.join(30)


FIRING = ("firing", "pending")


def _alert(service: Service, fingerprint: str) -> tuple[str, str] | None:
    # the alert layer's table: state and severity of the alert with this fingerprint
    with service.db.connect() as conn:
        row = conn.execute(sa.text("SELECT state, severity FROM alerts WHERE fingerprint = :fp"),
                           {"fp": fingerprint}).first()
    return (row[0], row[1]) if row else None


def alert_state(service: Service, fingerprint: str) -> str | None:
    row = _alert(service, fingerprint)
    return row[0] if row else None


def alert_severity(service: Service, fingerprint: str) -> str | None:
    row = _alert(service, fingerprint)
    return row[1] if row else None


def link(service: Service, device_id: str) -> LinkStatus:
    return service.devices.tracker.state(device_id).link


def offline_changes(service: Service, device_id: str) -> list[str]:
    return [c.reason for c in service.device_store.changes(device_id)
            if c.change is Change.OFFLINE]


def test_killed_connection_fires_the_will_and_marks_only_that_device_offline(
        running: tuple[Service, list[SimDevice]], influxdb: ManagedService) -> None:
    service, devices = running
    wait_for(lambda: all(link(service, d.id) is LinkStatus.ONLINE for d in devices), 15,
             "every device online")
    time.sleep(3.5)  # past the start-up hold-off
    victim = devices[1]
    victim.kill()
    # the tracker changes in memory just before the change row is written: wait for the row
    wait_for(lambda: bool(offline_changes(service, victim.id)), 15, "the will")
    assert offline_changes(service, victim.id) == ["will"]
    assert link(service, victim.id) is LinkStatus.OFFLINE
    time.sleep(1.0)
    for d in devices:
        if d is not victim:
            assert link(service, d.id) is LinkStatus.ONLINE
            assert offline_changes(service, d.id) == []
    # the change is in InfluxDB, tagged like the readings
    def stored() -> bool:
        rows = influxql(influxdb.info.url, "lifeline",
                        "SELECT \"change\", \"reason\", \"online\" FROM lifeline_device_status "
                        f"WHERE \"device\" = '{victim.id}' AND \"change\" = 'offline'")
        return bool(rows) and rows[0]["values"][0][2:] == ["will", 0]
    wait_for(stored, 10, "lifeline_device_status in InfluxDB")
    # persisted state, and the offline alert is firing
    service.devices.flush()
    assert service.device_store.states([victim.id])[victim.id].link is LinkStatus.OFFLINE
    fired = [f for f in service.devices.recent_findings if f.device_id == victim.id]
    assert [(f.rule_id, f.state.value) for f in fired] == [("status:offline", "firing")]
    wait_for(lambda: alert_state(service, f"{victim.id}/status:offline") in FIRING, 10,
             "the offline alert")


def test_silence_without_a_will_marks_offline(running: tuple[Service, list[SimDevice]]) -> None:
    service, devices = running
    wait_for(lambda: all(link(service, d.id) is LinkStatus.ONLINE for d in devices), 15,
             "every device online")
    quiet = devices[2]
    quiet._stop.set()  # connected (keep-alive answered) but sends nothing
    wait_for(lambda: bool(offline_changes(service, quiet.id)), 15, "silence")
    assert offline_changes(service, quiet.id) == ["silence"]
    assert link(service, quiet.id) is LinkStatus.OFFLINE
    assert all(link(service, d.id) is LinkStatus.ONLINE for d in devices if d is not quiet)


def test_device_events_become_findings_and_are_stored(
        running: tuple[Service, list[SimDevice]]) -> None:
    service, devices = running
    alarm = devices[0]
    wait_for(lambda: link(service, alarm.id) is LinkStatus.ONLINE, 15, "online")
    alarm.event({"type": "alarm", "level": 2, "metric": "lel", "value": 55.0,
                 "ts": int(time.time() * 1000)})
    alarm.event({"type": "valve_closed"})
    alarm.event({"type": "alarm", "level": "high"})  # bad: dead-lettered, nothing else
    fp = f"{alarm.id}/event:alarm"
    wait_for(lambda: alert_state(service, fp) in FIRING, 10, "the alarm alert")
    assert alert_severity(service, fp) == "critical"
    wait_for(lambda: alert_state(service, f"{alarm.id}/event:valve_closed") in FIRING, 10,
             "the valve alert")
    alarm.event({"type": "alarm_clear"})
    wait_for(lambda: alert_state(service, fp) == "resolved", 10, "the alarm to resolve")
    found = [(f.rule_id, f.state.value, f.severity.value)
             for f in service.devices.recent_findings if f.device_id == alarm.id]
    assert found == [("event:alarm", "firing", "critical"),
                     ("event:valve_closed", "firing", "major"),
                     ("event:alarm", "resolved", "major")]
    stored = service.device_store.events(alarm.id)
    assert [(s.event.type.value, s.severity) for s in stored] == [
        ("alarm_clear", "major"), ("valve_closed", "major"), ("alarm", "critical")]
    assert stored[2].event.value == 55.0 and stored[2].event.level == 2


def test_stopping_the_broker_marks_no_device_offline(
        running: tuple[Service, list[SimDevice]], broker: ManagedService) -> None:
    service, devices = running
    wait_for(lambda: all(link(service, d.id) is LinkStatus.ONLINE for d in devices), 15,
             "every device online")
    time.sleep(3.5)  # past the start-up hold-off: only the outage protects them now
    outages = service.devices.tracker.ingest.outages
    broker.stop()  # publishes every device's will, then drops everybody
    dead = devices[3]
    dead.kill()  # this one will not come back
    wait_for(lambda: not service.subscriber.connected, 10, "the service to notice")
    time.sleep(5.0)  # longer than the 3 s silence window
    broker.start()
    wait_for(lambda: service.subscriber.connected, 30, "the service to reconnect")
    alive = devices[:3]
    wait_for(lambda: all(d.client.is_connected() for d in alive), 30, "devices to reconnect")
    # past hold-off (3 s) and a silence window (3 s) after the reconnect
    wait_for(lambda: link(service, dead.id) is LinkStatus.OFFLINE, 20, "the dead device")
    time.sleep(1.0)
    for d in alive:
        assert offline_changes(service, d.id) == [], d.id
        assert link(service, d.id) is LinkStatus.ONLINE
    assert offline_changes(service, dead.id) in (["will"], ["silence"])
    assert service.devices.tracker.ingest.outages > outages


def test_a_service_restart_marks_only_the_device_that_died_meanwhile(
        tmp_path: Path, broker: ManagedService, influxdb: ManagedService) -> None:
    inventory, ids = write_fleet(tmp_path, 3)
    client_id = f"svc-{uuid.uuid4().hex[:6]}"
    service, stop, thread = start_service(tmp_path, broker, influxdb, inventory, client_id)
    devices = [SimDevice(i, broker.info.port) for i in ids]
    try:
        wait_for(lambda: all(link(service, d.id) is LinkStatus.ONLINE for d in devices), 15,
                 "every device online")
        stop.set()
        thread.join(30)
        assert {s.link for s in service.device_store.states(ids).values()} == {
            LinkStatus.ONLINE}  # persisted on shutdown
        dead = devices[0]
        dead.kill()  # dies while the service is down: its will is retained
        time.sleep(5.0)  # longer than the silence window
        service, stop, thread = start_service(tmp_path, broker, influxdb, inventory, client_id)
        wait_for(lambda: link(service, dead.id) is LinkStatus.OFFLINE, 20, "the dead device")
        time.sleep(1.0)
        for d in devices[1:]:
            assert link(service, d.id) is LinkStatus.ONLINE
            assert offline_changes(service, d.id) == []
        assert offline_changes(service, dead.id) == ["will"]
    finally:
        for d in devices:
            d.close()
        stop.set()
        thread.join(30)
