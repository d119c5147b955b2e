"""Device monitor on real decoder output and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from devices.catalogue import Catalogue
from devices.model import Device
from devices.series import SeriesTable
from devices.status import LinkStatus
from devices.store import CachedRegistry, DeviceStore
from devices.topics import TopicScheme
from ingest.batch import RawMessage
from ingest.decode import Decoder
from lifeline.db import open_database
from lifeline.device_status import DeviceMonitor
from lifeline.settings import DevicesSettings

pytestmark = pytest.mark.integration

S = 1_000_000_000
T0 = 1_800_000_000 * S


def msg(topic: str, body: object, at: int) -> RawMessage:
    payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return RawMessage(f"lifeline/{topic}", payload, at)


def test_batches_without_health_metrics_health_changes_status_and_events(db_url: str) -> None:
    engine = open_database(db_url)
    store = DeviceStore(engine)
    store.upsert_many([Device("g1", "gas_alarm", grid="G1", district="d", unit="gasco"),
                       Device("w1", "water_pressure")])
    registry = CachedRegistry(store)
    catalogue = Catalogue.builtin()
    series = SeriesTable()
    decoder = Decoder(TopicScheme("lifeline"), registry, catalogue, series)
    lines: list[str] = []
    monitor = DeviceMonitor(store, registry, catalogue, series, lines.extend,
                            DevicesSettings(holdoff="1s", will_grace="1s",
                                            check_interval="1s"), now_ns=T0)
    monitor.tick(True, 1, T0)

    def step(messages: list[RawMessage], at: int) -> list[tuple[str, str, str]]:
        found = monitor.process(decoder.decode(messages), at)
        return [(f.device_id, f.rule_id, f.state.value) for f in found]

    # telemetry with no battery/rssi at all (the batch has no health rows)
    assert step([msg("w1/telemetry", {"values": {"pressure": 0.3}}, T0)], T0) == []
    assert monitor.tracker.state("w1").link is LinkStatus.ONLINE
    # battery low, then a device alarm, then the will
    assert step([msg("g1/telemetry", {"values": {"lel": 1, "battery": 3.1}}, T0 + S),
                 msg("g1/event", {"type": "alarm", "level": 1, "metric": "lel",
                                  "value": 30}, T0 + S)], T0 + S) == [
        ("g1", "event:alarm", "firing")]
    assert monitor.tracker.state("g1").battery_low
    assert step([msg("g1/status", "offline", T0 + 5 * S)], T0 + 5 * S) == []
    monitor.tick(True, 1, T0 + 5 * S)  # within the will grace
    assert [(f.rule_id, f.state.value) for f in monitor.tick(True, 1, T0 + 7 * S)] == [
        ("status:offline", "firing")]
    assert step([msg("g1/status", {"state": "online", "fw": "2.0", "rssi": -112}, T0 + 8 * S)],
                T0 + 8 * S) == [("g1", "status:offline", "resolved")]
    state = monitor.tracker.state("g1")
    assert (state.link, state.weak_signal, state.firmware) == (LinkStatus.ONLINE, True, "2.0")
    monitor.flush()
    stored = store.states()
    assert stored["g1"].battery_low and stored["g1"].weak_signal
    assert (stored["g1"].battery, stored["g1"].rssi) == (3.1, -112.0)
    assert stored["w1"].link is LinkStatus.ONLINE
    assert [c.change.value for c in store.changes("g1")] == [
        "online", "weak_signal", "offline", "battery_low", "online"]
    assert [(e.event.type.value, e.severity) for e in store.events("g1")] == [("alarm", "major")]
    device_lines = [ln for ln in lines if ln.startswith("lifeline_device_status,device=g1,")]
    assert any('change="offline"' in ln and "online=0i" in ln and 'reason="will"' in ln
               for ln in device_lines)
    assert all(",type=gas_alarm,grid=G1,district=d,unit=gasco " in ln for ln in device_lines)
    # a database failure does not stop the events reaching the alert layer
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE device_events"))
    assert step([msg("g1/event", {"type": "tamper"}, T0 + 9 * S)], T0 + 9 * S) == [
        ("g1", "event:tamper", "firing")]
    engine.dispose()


def test_limit_changes_in_the_registry_apply_to_the_next_reading(db_url: str) -> None:
    engine = open_database(db_url)
    store = DeviceStore(engine)
    store.upsert_many([Device("g1", "gas_alarm", limits={"battery": {"low": 3.0}})])
    registry = CachedRegistry(store)
    catalogue = Catalogue.builtin()
    series = SeriesTable()
    decoder = Decoder(TopicScheme("lifeline"), registry, catalogue, series)
    monitor = DeviceMonitor(store, registry, catalogue, series, lambda lines: None,
                            DevicesSettings(), now_ns=T0)

    def battery(value: float, at: int) -> list[str]:
        result = decoder.decode([msg("g1/telemetry", {"values": {"battery": value}}, at)])
        monitor.process(result, at)
        return [c.change.value for c in store.changes("g1")]

    assert battery(3.2, T0) == ["online"]  # its own limit is 3.0
    store.replace(Device("g1", "gas_alarm", limits={"battery": {"low": 3.5}}))
    registry.invalidate("g1")  # what the API does after a change
    assert battery(3.4, T0 + S)[0] == "battery_low"
    assert battery(3.55, T0 + 2 * S)[0] == "battery_low"  # inside the 0.1 V band
    assert battery(3.65, T0 + 3 * S)[0] == "battery_ok"
    engine.dispose()
