"""The aiomqtt fleet runner against a real Mosquitto: published = delivered by the broker."""

from __future__ import annotations

import threading
import time
from collections import Counter

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devtools.harness import ManagedService
from simulators.runner import RunnerOptions, run_fleet
from simulators.scenario import parse_scenario
from simulators.stream import CityRun

pytestmark = pytest.mark.integration


class Counting:
    """A paho subscriber that counts what the broker delivers."""

    def __init__(self, port: int, prefix: str) -> None:
        self.lock = threading.Lock()
        self.telemetry = 0
        self.values = 0
        self.arrays = 0
        self.statuses: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"count-{prefix}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{prefix}/#", qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            kind = msg.topic.rsplit("/", 1)[1]
            if kind == "telemetry":
                body = orjson.loads(msg.payload)
                docs = body if isinstance(body, list) else [body]
                self.arrays += isinstance(body, list)
                self.telemetry += len(docs)
                self.values += sum(len(d["values"]) for d in docs)
            elif kind == "status":
                self.statuses.append((msg.topic.split("/")[1], msg.payload))

    def settle(self, values: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.values < values and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


SCENARIO = """
[scenario]
name = "{name}"
seed = 5
duration = "10m"
[fleet]
districts = 2
grids = 6
devices = {devices}
[[incident]]
kind = "offline"
at = "2m"
duration = "3m"
will = true
"""


def test_devices_mode_publishes_everything_and_wills_fire(mosquitto: ManagedService) -> None:
    scenario = parse_scenario(SCENARIO.format(name="dev", devices=300), source="t")
    counter = Counting(mosquitto.info.port, "fleetdev")
    try:
        stats = run_fleet(CityRun(scenario), RunnerOptions(
            port=mosquitto.info.port, prefix="fleetdev", speed=120, mode="devices"))
        counter.settle(stats.values)
    finally:
        counter.close()
    assert stats.failed == 0
    assert stats.connected == 301  # 300 devices + one reconnect after the offline spell
    assert counter.values == stats.values > 0
    assert counter.telemetry == stats.messages
    dropped = [d for d, p in counter.statuses if p == b"offline"]
    assert len(dropped) == stats.wills_triggered == 1
    assert Counter(p for _, p in counter.statuses)[b"online"] == 301


def test_gateway_mode_batches_arrays_on_one_connection(mosquitto: ManagedService) -> None:
    scenario = parse_scenario(SCENARIO.format(name="gw", devices=300), source="t")
    counter = Counting(mosquitto.info.port, "fleetgw")
    try:
        stats = run_fleet(CityRun(scenario), RunnerOptions(
            port=mosquitto.info.port, prefix="fleetgw", speed=0, mode="gateway",
            gateway_window_s=120))
        counter.settle(stats.values)
    finally:
        counter.close()
    assert stats.connected == 1 and stats.failed == 0
    assert counter.values == stats.values > 0
    assert counter.arrays == stats.messages and counter.arrays < counter.telemetry


@pytest.mark.slow
def test_ten_thousand_devices_for_a_minute(mosquitto: ManagedService) -> None:
    """Each device on its own connection; accelerated 10x so a minute carries ten."""
    scenario = parse_scenario(
        '[scenario]\nname = "big"\nseed = 9\nduration = "10m"\n'
        '[fleet]\ndistricts = 5\ngrids = 80\ndevices = 10000\n', source="t")
    counter = Counting(mosquitto.info.port, "fleetbig")
    try:
        stats = run_fleet(CityRun(scenario), RunnerOptions(
            port=mosquitto.info.port, prefix="fleetbig", speed=10, mode="devices"))
        counter.settle(stats.values, timeout=120)
    finally:
        counter.close()
    assert stats.connected == 10_000 and stats.failed == 0
    assert counter.values == stats.values > 0
