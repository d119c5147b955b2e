"""Online/offline tracker: wills, silence, ingest-outage hold-off, health; event findings."""

from __future__ import annotations

from devices.catalogue import Catalogue
from devices.events import DeviceEvent, EventType, LinkState, StatusUpdate
from devices.model import Device
from devices.registry import MemoryRegistry
from devices.status import Change, LinkStatus, StatusTracker, TrackerOptions
from rules.device_events import event_findings, status_findings
from rules.model import FindingState, Severity

S = 1_000_000_000
CAT = Catalogue.builtin()


def make(n: int = 3, *, interval_s: float = 10.0, holdoff_s: float = 5.0,
         mass_min: int = 10) -> tuple[StatusTracker, MemoryRegistry]:
    reg = MemoryRegistry([Device(f"d{i}", "gas_alarm", interval_s=interval_s) for i in range(n)])
    tracker = StatusTracker(CAT, reg.__iter__, reg.get, now_ns=0,
                            options=TrackerOptions(holdoff_ns=int(holdoff_s * S),
                                                   mass_offline_min=mass_min))
    tracker.ingest_state(True, 1, 0)
    return tracker, reg


def offline(tracker: StatusTracker) -> set[str]:
    return {s.device_id for s in tracker.states() if s.link is LinkStatus.OFFLINE}


def test_will_marks_offline_after_the_grace_and_data_brings_it_back() -> None:
    tracker, _ = make()  # will grace 2 s
    tracker.seen(["d0", "d1", "d2"], 1 * S)
    assert tracker.status([StatusUpdate("d1", 10 * S, LinkState.OFFLINE)]) == []
    assert tracker.check(11 * S) == []
    changes = tracker.check(12 * S)
    assert [(c.device_id, c.change, c.reason, c.ts_ns) for c in changes] == [
        ("d1", Change.OFFLINE, "will", 10 * S)]
    assert tracker.status([StatusUpdate("d1", 13 * S, LinkState.OFFLINE)]) == []  # no repeat
    assert tracker.check(20 * S) == []
    back = tracker.seen(["d1"], 12 * S)
    assert [(c.change, c.reason) for c in back] == [(Change.ONLINE, "data")]
    assert tracker.state("d1").since_ns == 12 * S


def test_silence_beyond_offline_after_times_interval() -> None:
    tracker, _ = make(interval_s=10.0)  # gas_alarm offline_after = 3 → 30 s
    tracker.seen(["d0", "d1", "d2"], 1 * S)
    tracker.seen(["d0", "d1"], 20 * S)
    assert tracker.check(31 * S) == []  # d2 silent 30 s: not yet beyond
    changes = tracker.check(32 * S)
    assert [(c.device_id, c.reason, c.ts_ns) for c in changes] == [("d2", "silence", 31 * S)]
    assert tracker.check(33 * S) == []


def test_ingest_outage_is_not_device_silence() -> None:
    tracker, _ = make(interval_s=10.0, holdoff_s=5.0)
    tracker.seen(["d0", "d1", "d2"], 1 * S)
    tracker.ingest_state(False, 1, 5 * S)  # broker gone
    assert tracker.check(100 * S) == []  # long past 30 s: nothing counted while down
    tracker.ingest_state(True, 2, 100 * S)  # reconnected: a fresh window for everybody
    # a will the broker published on its own shutdown, redelivered on reconnect
    assert tracker.status([StatusUpdate("d0", 100 * S, LinkState.OFFLINE),
                           StatusUpdate("d1", 100 * S, LinkState.OFFLINE)]) == []
    tracker.seen(["d0"], 102 * S)  # d0 reconnected within the hold-off
    assert tracker.check(104 * S) == []  # still holding off
    changes = tracker.check(106 * S)  # hold-off over: d1 never came back
    assert [(c.device_id, c.reason) for c in changes] == [("d1", "will")]
    assert offline(tracker) == {"d1"}
    assert tracker.check(129 * S) == []  # d2 has a full window from the reconnect
    assert [c.device_id for c in tracker.check(131 * S)] == ["d2"]


def test_wills_just_before_our_own_disconnect_wait_for_the_holdoff() -> None:
    tracker, _ = make(interval_s=100.0, holdoff_s=5.0)
    tracker.seen(["d0", "d1", "d2"], 1 * S)
    # a stopping broker publishes every will to us, then drops our connection
    tracker.status([StatusUpdate(f"d{i}", 10 * S, LinkState.OFFLINE) for i in range(3)])
    tracker.ingest_state(False, 1, 10 * S + 1000)
    assert tracker.check(20 * S) == []
    tracker.ingest_state(True, 2, 30 * S)
    tracker.seen(["d0", "d1"], 31 * S)  # they reconnected
    assert tracker.check(34 * S) == []
    assert [(c.device_id, c.reason, c.ts_ns) for c in tracker.check(35 * S)] == [
        ("d2", "will", 10 * S)]


def test_a_reconnect_seen_only_through_the_counter_restarts_the_window() -> None:
    tracker, _ = make(interval_s=10.0)
    tracker.seen(["d0", "d1", "d2"], 0)
    tracker.ingest_state(True, 2, 25 * S)  # the disconnect happened between two polls
    assert tracker.check(40 * S) == []
    assert len(tracker.check(56 * S)) == 3


def test_fleet_wide_silence_is_taken_as_an_ingest_outage() -> None:
    tracker, _ = make(n=20, interval_s=10.0, mass_min=10)
    tracker.seen([f"d{i}" for i in range(20)], 0)
    assert tracker.check(31 * S + 1) == []  # all 20 silent at once: hold off
    assert tracker.ingest.outages == 1 and offline(tracker) == set()
    tracker.seen([f"d{i}" for i in range(15)], 40 * S)
    changes = tracker.check(62 * S)  # 5 of 20 silent: genuine
    assert sorted(c.device_id for c in changes) == [f"d{i}" for i in range(15, 20)]


def test_a_mass_silence_that_outlasts_the_extra_window_is_real() -> None:
    tracker, _ = make(n=20, interval_s=10.0, mass_min=10)
    tracker.seen([f"d{i}" for i in range(20)], 0)
    tracker.seen(["d0"], 30 * S)
    assert tracker.check(31 * S) == []  # 19 silent: held once
    tracker.seen(["d0"], 60 * S)
    changes = tracker.check(62 * S)  # the same 19 are still silent a window later
    assert sorted(c.device_id for c in changes) == sorted(f"d{i}" for i in range(1, 20))


def test_never_seen_devices_do_not_trigger_the_mass_guard() -> None:
    tracker, _ = make(n=20, interval_s=10.0, mass_min=10)
    tracker.seen(["d0", "d1"], 29 * S)  # 18 registered but never installed
    changes = tracker.check(31 * S)
    assert len(changes) == 18 and {c.reason for c in changes} == {"never_seen"}


def test_never_seen_devices_go_offline_after_one_window_from_start() -> None:
    tracker, _ = make(interval_s=10.0)
    tracker.seen(["d0", "d1"], 29 * S)
    changes = tracker.check(31 * S)
    assert [(c.device_id, c.reason) for c in changes] == [("d2", "never_seen")]


def test_disabled_or_unknown_devices_are_not_checked() -> None:
    reg = MemoryRegistry([Device("on", "gas_alarm", interval_s=1.0)])
    tracker = StatusTracker(CAT, reg.__iter__, reg.get, now_ns=0)
    tracker.ingest_state(True, 1, 0)
    tracker.seen(["ghost"], 0)
    assert [c.device_id for c in tracker.check(100 * S)] == ["on"]


def test_battery_and_signal_health_with_hysteresis_and_overrides() -> None:
    reg = MemoryRegistry([Device("d0", "gas_alarm"),
                          Device("d1", "gas_alarm", limits={"battery": {"low": 3.0}})])
    tracker = StatusTracker(CAT, reg.__iter__, reg.get, now_ns=0)
    assert tracker.health([("d0", "battery", 3.5)], 1) == []
    low = tracker.health([("d0", "battery", 3.2)], 2)
    assert [(c.change, c.reason) for c in low] == [(Change.BATTERY_LOW, "battery=3.2")]
    assert tracker.health([("d0", "battery", 3.35)], 3) == []  # inside the hysteresis band
    assert [c.change for c in tracker.health([("d0", "battery", 3.45)], 4)] == [
        Change.BATTERY_OK]
    assert tracker.health([("d1", "battery", 3.2)], 5) == []  # its own limit is 3.0
    weak = tracker.status([StatusUpdate("d0", 6, LinkState.ONLINE, firmware="1.4.2",
                                        rssi=-110.0)])
    assert Change.WEAK_SIGNAL in [c.change for c in weak]
    state = tracker.state("d0")
    assert (state.weak_signal, state.rssi, state.firmware, state.battery) == (
        True, -110.0, "1.4.2", 3.45)
    assert {s.device_id for s in tracker.take_dirty()} == {"d0", "d1"}
    assert tracker.take_dirty() == []


def test_event_findings_use_the_type_severity_and_clear_pairs() -> None:
    reg = MemoryRegistry([Device("g", "gas_alarm"), Device("m", "manhole_cover")])
    events = [
        DeviceEvent("g", 1, EventType.ALARM, level=1, metric="lel", value=30.0),
        DeviceEvent("g", 2, EventType.ALARM, level=2, metric="lel", value=55.0),
        DeviceEvent("g", 3, EventType.ALARM_CLEAR),
        DeviceEvent("g", 4, EventType.VALVE_CLOSED),
        DeviceEvent("g", 5, EventType.POWER_RESTORE),
        DeviceEvent("m", 6, EventType.TAMPER),
        DeviceEvent("m", 7, EventType.LOW_BATTERY),
    ]
    found = [f for _, f in event_findings(events, reg, CAT)]
    assert [(f.rule_id, f.state, f.severity) for f in found] == [
        ("event:alarm", FindingState.FIRING, Severity.MAJOR),
        ("event:alarm", FindingState.FIRING, Severity.CRITICAL),
        ("event:alarm", FindingState.RESOLVED, Severity.MAJOR),
        ("event:valve_closed", FindingState.FIRING, Severity.MAJOR),
        ("event:power_loss", FindingState.RESOLVED, Severity.MINOR),
        ("event:tamper", FindingState.FIRING, Severity.MAJOR),
        ("event:low_battery", FindingState.FIRING, Severity.WARNING),
    ]
    assert found[1].metric == "lel" and found[1].value == 55.0
    assert found[3].metric == "valve_closed" and found[3].value == 0.0


def test_status_findings_fire_on_offline_and_resolve_on_online() -> None:
    reg = MemoryRegistry([Device("p", "gas_pipeline")])
    tracker = StatusTracker(CAT, reg.__iter__, reg.get, now_ns=0)
    tracker.ingest_state(True, 1, 0)
    tracker.seen(["p"], 0)
    tracker.status([StatusUpdate("p", 100 * S, LinkState.OFFLINE)])
    changes = tracker.check(103 * S)
    changes += tracker.seen(["p"], 104 * S)
    found = status_findings(changes, reg, CAT)
    assert [(f.rule_id, f.state, f.severity) for f in found] == [
        ("status:offline", FindingState.FIRING, Severity.MAJOR),
        ("status:offline", FindingState.RESOLVED, Severity.MAJOR),
    ]


def test_last_seen_only_changes_are_persisted_separately() -> None:
    tracker, _ = make()
    tracker.seen(["d0"], 1 * S)
    assert [s.device_id for s in tracker.take_dirty(include_seen=False)] == ["d0"]  # online
    tracker.seen(["d0"], 2 * S)
    assert tracker.take_dirty(include_seen=False) == []
    (state,) = tracker.take_dirty()
    assert state.last_seen_ns == 2 * S
    assert tracker.take_dirty() == []


def test_after_a_restart_persisted_devices_get_a_window_from_the_start() -> None:
    from devices.status import DeviceState

    reg = MemoryRegistry([Device("d0", "gas_alarm", interval_s=10.0),
                          Device("d1", "gas_alarm", interval_s=10.0)])
    tracker = StatusTracker(CAT, reg.__iter__, reg.get, now_ns=1000 * S)
    tracker.load([DeviceState("d0", LinkStatus.ONLINE, 1 * S, 5 * S),  # seen long ago
                  DeviceState("d1", LinkStatus.OFFLINE, 1 * S, 1 * S, "will")])
    tracker.ingest_state(True, 1, 1000 * S)
    assert tracker.check(1029 * S) == []
    assert [(c.device_id, c.reason) for c in tracker.check(1031 * S)] == [("d0", "silence")]
    assert tracker.state("d1").link is LinkStatus.OFFLINE  # stays offline until heard from
