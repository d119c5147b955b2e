"""Decoder: every reason code, boundaries, and a property test that it never raises."""

from __future__ import annotations

import math
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.catalogue import Catalogue
from devices.model import Device
from devices.registry import MemoryRegistry
from devices.series import SeriesTable
from devices.topics import TopicScheme
from ingest.batch import RawMessage, ReadingFlag
from ingest.deadletter import Reason
from ingest.decode import DecodeLimits, Decoder, DecodeResult, PointMemory
from ingest.lineproto import batch_lines

NOW_NS = time.time_ns()
NOW_MS = NOW_NS // 1_000_000


def make_decoder(limits: DecodeLimits | None = None) -> Decoder:
    registry = MemoryRegistry([Device("gas-1", "gas_alarm", grid="G1", district="d", unit="u"),
                               Device("wp-1", "water_pressure")])
    return Decoder(TopicScheme("lifeline"), registry, Catalogue.builtin(), SeriesTable(), limits)


def msg(payload: object, topic: str = "lifeline/gas-1/telemetry") -> RawMessage:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return RawMessage(topic, body, NOW_NS)


def test_single_object_accepted_with_its_timestamp() -> None:
    dec = make_decoder()
    res = dec.decode([msg({"ts": NOW_MS, "seq": 1, "values": {"lel": 3.2, "battery": 3.6}})])
    assert res.dead == []
    assert len(res.batch) == 2
    assert res.batch.value.tolist() == [3.2, 3.6]
    assert set(res.batch.ts_ns.tolist()) == {NOW_MS * 1_000_000}
    assert res.batch.flags.tolist() == [0, 0]


def test_array_of_objects_backfill() -> None:
    dec = make_decoder()
    body = [{"ts": NOW_MS - 1000 * i, "values": {"lel": float(i)}} for i in range(50)]
    res = dec.decode([msg(body)])
    assert res.dead == []
    assert len(res.batch) == 50
    assert res.readings == 50


def test_iso_timestamp_and_seconds_and_missing() -> None:
    dec = make_decoder()
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(NOW_MS // 1000))
    res = dec.decode([
        msg({"ts": iso, "values": {"lel": 1}}),
        msg({"ts": NOW_MS // 1000, "values": {"lel": 2}}),
        msg({"values": {"lel": 3}}),
    ])
    assert res.dead == []
    expected = (NOW_MS // 1000) * 1_000_000_000
    assert res.batch.ts_ns.tolist()[:2] == [expected, expected]
    assert res.batch.ts_ns.tolist()[2] == NOW_NS
    assert res.batch.flags.tolist()[2] == ReadingFlag.TS_MISSING


def test_boolean_is_stored_as_0_1_and_unit_conversion() -> None:
    dec = make_decoder()
    res = dec.decode([msg({"ts": NOW_MS, "values": {"lel": 1000}, "units": {"lel": "ppm"}}),
                      msg({"ts": NOW_MS + 1, "values": {"lel": True}})])
    assert res.dead == []
    assert res.batch.value.tolist() == [2.0, 1.0]  # 1000 ppm methane = 2 %LEL
    assert res.batch.flags.tolist()[0] == ReadingFlag.CONVERTED


def test_out_of_range_is_stored_and_flagged() -> None:
    res = make_decoder().decode([msg({"ts": NOW_MS, "values": {"lel": 150.0}})])
    assert res.dead == []
    assert res.batch.flags.tolist() == [ReadingFlag.OUT_OF_RANGE]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (msg(b"{not json"), Reason.NOT_JSON),
        (msg(b"\xff\xfe\x00"), Reason.NOT_JSON),
        (msg(b"[" * 5000 + b"]" * 5000), Reason.NOT_JSON),
        (msg({"values": "lots"}), Reason.BAD_SHAPE),
        (msg([]), Reason.BAD_SHAPE),
        (msg(42), Reason.BAD_SHAPE),
        (msg({"ts": NOW_MS, "values": {}}), Reason.BAD_SHAPE),
        (msg(b'{"ts": 1, "values": {"lel": NaN}}'.replace(b"1,", str(NOW_MS).encode() + b",")),
         Reason.NON_FINITE),
        (msg(b'{"values": {"lel": Infinity}}'), Reason.NON_FINITE),
        (msg(b'{"values": {"lel": 1e999}}'), Reason.NON_FINITE),
        (msg({"values": {"lel": "3.2"}}), Reason.BAD_VALUE),
        (msg({"values": {"lel": None}}), Reason.BAD_VALUE),
        (msg({"values": {"lel": 1}}, topic="lifeline/ghost/telemetry"), Reason.UNKNOWN_DEVICE),
        (msg({"values": {"humidity": 1}}), Reason.UNKNOWN_METRIC),
        (msg({"values": {"lel": 1}, "units": {"lel": "furlong"}}), Reason.BAD_UNIT),
        (msg({"ts": "yesterday", "values": {"lel": 1}}), Reason.BAD_TIMESTAMP),
        (msg({"ts": True, "values": {"lel": 1}}), Reason.BAD_TIMESTAMP),
        (msg({"ts": -5, "values": {"lel": 1}}), Reason.BAD_TIMESTAMP),
        (msg({"ts": NOW_MS + 3_600_000, "values": {"lel": 1}}), Reason.TS_FUTURE),
        (msg({"ts": NOW_MS - 90 * 86_400_000, "values": {"lel": 1}}), Reason.TS_PAST),
        (msg({"values": {"lel": 1}}, topic="lifeline/gas-1/telemetry/extra"), Reason.BAD_TOPIC),
        (msg({"values": {"lel": 1}}, topic="other/gas-1/telemetry"), Reason.BAD_TOPIC),
        (msg({"values": {"lel": 1}}, topic="lifeline/+/telemetry"), Reason.BAD_TOPIC),
        (msg({"values": {"lel": 1}}, topic="lifeline/../telemetry"), Reason.BAD_TOPIC),
        (msg(b"x" * 300_000), Reason.OVERSIZED),
    ],
)
def test_reason_codes(message: RawMessage, reason: Reason) -> None:
    res = make_decoder().decode([message])
    assert [d.reason for d in res.dead] == [reason]
    assert res.dead[0].payload == message.payload
    assert res.dead[0].detail


def test_partly_bad_message_keeps_good_values_and_dead_letters_the_rest() -> None:
    res = make_decoder().decode([msg({"ts": NOW_MS, "values": {"lel": 4.0, "humidity": 9}})])
    assert res.batch.value.tolist() == [4.0]
    assert [d.reason for d in res.dead] == [Reason.UNKNOWN_METRIC]
    assert "humidity" in res.dead[0].detail


def test_bad_message_does_not_stop_the_batch() -> None:
    res = make_decoder().decode([msg(b"garbage"), msg({"ts": NOW_MS, "values": {"lel": 1.0}})])
    assert len(res.dead) == 1
    assert res.batch.value.tolist() == [1.0]


def test_too_many_readings_in_one_message() -> None:
    dec = make_decoder(DecodeLimits(max_readings_per_message=3))
    res = dec.decode([msg([{"values": {"lel": 1}}] * 4)])
    assert [d.reason for d in res.dead] == [Reason.OVERSIZED]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
readings = st.fixed_dictionaries(
    {"values": st.dictionaries(st.sampled_from(["lel", "battery", "rssi", "x"]),
                               st.integers() | st.floats() | st.booleans() | st.none(),
                               max_size=4)},
    optional={"ts": st.integers(-10, 2**63) | st.floats() | st.text(max_size=30),
              "seq": json_values, "units": json_values},
)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(payload: bytes) -> None:
    res = make_decoder().decode([RawMessage("lifeline/gas-1/telemetry", payload, NOW_NS)])
    assert len(res.batch) > 0 or len(res.dead) == 1


@settings(max_examples=300, deadline=None)
@given(doc=json_values | readings | st.lists(readings, max_size=5))
def test_arbitrary_json_is_accepted_or_dead_lettered(doc: object) -> None:
    try:
        payload = orjson.dumps(doc)
    except TypeError:
        return
    res = make_decoder().decode([RawMessage("lifeline/gas-1/telemetry", payload, NOW_NS)])
    assert len(res.batch) > 0 or len(res.dead) == 1
    assert all(math.isfinite(v) for v in res.batch.value.tolist())
    for dead in res.dead:
        assert isinstance(dead.reason, Reason)
        assert dead.payload == payload


def test_events_and_statuses_become_typed_records() -> None:
    from devices.events import EventType, LinkState

    dec = make_decoder()
    res = dec.decode([
        msg({"ts": NOW_MS, "type": "alarm", "level": 2, "metric": "lel", "value": 52.0},
            topic="lifeline/gas-1/event"),
        msg({"type": "valve_closed"}, topic="lifeline/gas-1/event"),
        msg(b"offline", topic="lifeline/gas-1/status"),
        msg({"state": "online", "fw": "1.4.2", "rssi": -71}, topic="lifeline/gas-1/status"),
    ])
    assert res.dead == []
    alarm, valve = res.events
    assert (alarm.type, alarm.level, alarm.metric, alarm.value) == (EventType.ALARM, 2, "lel", 52.0)
    assert alarm.ts_ns == NOW_MS * 1_000_000 and not alarm.ts_missing
    assert valve.type is EventType.VALVE_CLOSED and valve.ts_missing and valve.ts_ns == NOW_NS
    assert [s.state for s in res.statuses] == [LinkState.OFFLINE, LinkState.ONLINE]
    assert (res.statuses[1].firmware, res.statuses[1].rssi) == ("1.4.2", -71.0)


@pytest.mark.parametrize(
    ("payload", "topic", "reason"),
    [
        ({"type": "explosion"}, "event", Reason.BAD_SHAPE),
        ([1, 2], "event", Reason.BAD_SHAPE),
        ({"type": "alarm", "level": "high"}, "event", Reason.BAD_VALUE),
        ({"type": "alarm", "level": True}, "event", Reason.BAD_VALUE),
        ({"type": "alarm", "metric": "humidity"}, "event", Reason.UNKNOWN_METRIC),
        ({"type": "alarm", "value": "x"}, "event", Reason.BAD_VALUE),
        (b'{"type": "alarm", "value": NaN}', "event", Reason.NON_FINITE),
        ({"type": "alarm", "ts": NOW_MS + 86_400_000}, "event", Reason.TS_FUTURE),
        (b"sleeping", "status", Reason.NOT_JSON),
        ("sleeping", "status", Reason.BAD_SHAPE),
        ({"state": "dozing"}, "status", Reason.BAD_SHAPE),
        (5, "status", Reason.BAD_SHAPE),
    ],
)
def test_bad_events_and_statuses_are_dead_lettered(payload: object, topic: str,
                                                   reason: Reason) -> None:
    res = make_decoder().decode([msg(payload, topic=f"lifeline/gas-1/{topic}")])
    assert [d.reason for d in res.dead] == [reason]
    assert res.events == [] and res.statuses == []


def test_duplicates_by_seq_are_dropped_and_counted() -> None:
    dec = make_decoder()
    first = msg({"ts": NOW_MS, "seq": 7, "values": {"lel": 1.0}})
    res = dec.decode([first, first])  # QoS 1 redelivery of the same message
    assert res.batch.value.tolist() == [1.0]
    assert (res.readings, res.duplicates, res.dead) == (1, 1, [])
    again = dec.decode([first])  # a later batch: still remembered
    assert (len(again.batch), again.duplicates) == (0, 1)
    # The same seq with another ts is a device that restarted its counter: kept.
    restarted = dec.decode([msg({"ts": NOW_MS + 5, "seq": 7, "values": {"lel": 2.0}})])
    assert (restarted.batch.value.tolist(), restarted.duplicates) == ([2.0], 0)
    # Another device may use the same seq and ts.
    other = dec.decode([msg({"ts": NOW_MS, "seq": 7, "values": {"pressure": 0.3}},
                            topic="lifeline/wp-1/telemetry")])
    assert (len(other.batch), other.duplicates) == (1, 0)


def test_duplicates_without_seq_need_same_ts_and_values() -> None:
    dec = make_decoder()
    res = dec.decode([
        msg({"ts": NOW_MS, "values": {"lel": 1.0}}),
        msg({"ts": NOW_MS, "values": {"lel": 1.0}}),  # duplicate
        msg({"ts": NOW_MS, "values": {"lel": 1.5}}),  # same time, other value: kept
        msg({"values": {"lel": 1.0}}),  # no ts: cannot tell, kept (flagged)
        msg({"values": {"lel": 1.0}}),
    ])
    assert res.batch.value.tolist() == [1.0, 1.5, 1.0, 1.0]
    assert res.duplicates == 1


def test_duplicates_inside_a_backfill_array_and_late_readings() -> None:
    dec = make_decoder()
    backfill = [{"ts": NOW_MS - 60_000 * i, "seq": 100 - i, "values": {"lel": float(i)}}
                for i in range(5)]
    res = dec.decode([msg(backfill), msg([*backfill[1:3], backfill[0]])])
    assert res.duplicates == 3 and res.readings == 5
    # Late and out-of-order readings keep their own timestamps.
    assert res.batch.ts_ns.tolist() == [(NOW_MS - 60_000 * i) * 1_000_000 for i in range(5)]


def test_dedup_can_be_switched_off() -> None:
    dec = make_decoder(DecodeLimits(dedup_window=0))
    first = msg({"ts": NOW_MS, "seq": 1, "values": {"lel": 1.0}})
    res = dec.decode([first, first])
    assert (len(res.batch), res.duplicates) == (2, 0)


def test_unhashable_values_are_not_deduplicated_but_still_judged() -> None:
    res = make_decoder().decode([msg({"ts": NOW_MS, "values": {"lel": [1, 2]}})] * 2)
    assert [d.reason for d in res.dead] == [Reason.BAD_VALUE, Reason.BAD_VALUE]


@settings(max_examples=200, deadline=None)
@given(docs=st.lists(readings | st.lists(readings, max_size=3), min_size=1, max_size=6))
def test_every_message_is_accepted_duplicate_or_dead_lettered(docs: list[object]) -> None:
    """Accounting over a stream with repeats (as QoS 1 redelivery makes): per message,
    something is stored, or it is a counted duplicate, or it is dead-lettered."""
    dec = make_decoder()
    for doc in docs + docs[:2]:
        try:
            payload = orjson.dumps(doc)
        except TypeError:
            continue
        res = dec.decode([RawMessage("lifeline/gas-1/telemetry", payload, NOW_NS)])
        assert len(res.dead) <= 1
        assert res.readings + res.duplicates > 0 or len(res.dead) == 1
        assert (len(res.batch) > 0) == (res.readings > 0)
        assert all(math.isfinite(v) for v in res.batch.value.tolist())


def _iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


@pytest.mark.parametrize(("offset_ms", "reason"), [
    (5 * 60_000, None), (5 * 60_000 + 1, Reason.TS_FUTURE),
    (-30 * 86_400_000, None), (-30 * 86_400_000 - 1, Reason.TS_PAST),
])
def test_timestamp_bounds_are_inclusive(offset_ms: int, reason: Reason | None) -> None:
    """The epoch-ms fast path and the general path agree on the exact bounds
    (``max_future`` 5 min, ``max_past`` 30 days by default), in objects and arrays."""
    dec = make_decoder()
    received_ms = NOW_MS
    for body in ({"ts": received_ms + offset_ms, "values": {"lel": 1}},  # values differ:
                 [{"ts": received_ms + offset_ms, "values": {"lel": 2}}],  # not duplicates
                 {"ts": _iso_ms(received_ms + offset_ms), "values": {"lel": 3}}):
        res = dec.decode([RawMessage("lifeline/gas-1/telemetry", orjson.dumps(body),
                                     received_ms * 1_000_000)])
        if reason is None:
            assert res.dead == [] and res.batch.ts_ns.tolist() == [
                (received_ms + offset_ms) * 1_000_000]
        else:
            assert len(res.dead) == 1 and res.dead[0].reason is reason and len(res.batch) == 0


# -- the identity of a reading and its InfluxDB point (README "Ingest": identity) --------

def points(res: DecodeResult, dec: Decoder) -> list[int]:
    """The point time of each line the writer would send for ``res``."""
    return [int(line.rsplit(" ", 1)[1]) for line in batch_lines(res.batch, dec.series)]


def test_an_array_without_ts_gets_one_point_per_reading() -> None:
    dec = make_decoder()
    res = dec.decode([msg([{"values": {"lel": float(i)}} for i in range(5)])])
    assert res.readings == 5 and res.dead == []
    assert res.batch.ts_ns.tolist() == [NOW_NS] * 5  # the reading's time: the receive time
    assert points(res, dec) == [NOW_NS + i for i in range(5)]  # in order, one ns apart


def test_messages_without_ts_received_close_together_never_share_a_point() -> None:
    dec = make_decoder()
    body = orjson.dumps([{"values": {"lel": float(i)}} for i in range(100)])
    first = dec.decode([RawMessage("lifeline/gas-1/telemetry", body, NOW_NS),
                        RawMessage("lifeline/gas-1/telemetry", body, NOW_NS + 10)])
    second = dec.decode([RawMessage("lifeline/gas-1/telemetry", body, NOW_NS + 50)])
    stamps = points(first, dec) + points(second, dec)
    assert len(set(stamps)) == 300 and stamps == sorted(stamps)
    # a dead letter replayed later keeps its own receive time (not pushed to "now")
    old = dec.decode([RawMessage("lifeline/gas-1/telemetry", orjson.dumps(
        {"values": {"lel": 1.0}}), NOW_NS - 60 * 10**9)])
    assert points(old, dec) == [NOW_NS - 60 * 10**9]


def test_same_ms_with_different_seq_get_distinct_deterministic_points() -> None:
    bodies = [{"ts": NOW_MS, "seq": seq, "values": {"lel": 1.0}} for seq in (41, 42, 43)]
    dec = make_decoder()
    together = dec.decode([msg(b) for b in bodies])
    assert (together.readings, together.duplicates) == (3, 0)
    stamps = points(together, dec)
    base = NOW_MS * 1_000_000
    assert stamps == [base + 41, base + 42, base + 43]  # in seq order, inside the ms
    assert together.batch.ts_ns.tolist() == [base] * 3  # rules judge the time as sent
    # Another decoder (a restarted service), other batches, another order: same points.
    again = make_decoder()
    for body, stamp in reversed(list(zip(bodies, stamps, strict=True))):
        assert points(again.decode([msg(body)]), again) == [stamp]


def test_epoch_seconds_several_per_second() -> None:
    dec = make_decoder()
    second = NOW_MS // 1000
    res = dec.decode([msg({"ts": second, "seq": s, "values": {"lel": 1.0}}) for s in range(4)]
                     + [msg({"ts": second, "values": {"lel": v}}) for v in (2.0, 3.0, 4.0)])
    assert (res.readings, res.duplicates) == (7, 0)
    stamps = points(res, dec)
    base = second * 1_000_000_000
    assert len(set(stamps)) == 7
    assert all(base <= t < base + 1000 for t in stamps)  # tie-breaks stay under the µs


def test_tie_break_collisions_are_resolved() -> None:
    dec = make_decoder()
    # seq 7 and 1007 have the same tie-break; 300 readings without seq at one ms make
    # collisions of their value hashes (1,000 slots) all but certain
    res = dec.decode([msg({"ts": NOW_MS, "seq": 7, "values": {"lel": 1.0}}),
                      msg({"ts": NOW_MS, "seq": 1007, "values": {"lel": 1.0}}),
                      msg([{"ts": NOW_MS, "values": {"lel": i / 10}} for i in range(300)])])
    assert res.readings == 302
    stamps = points(res, dec)
    assert len(set(stamps)) == 302
    assert all(NOW_MS * 1_000_000 <= t < NOW_MS * 1_000_000 + 1000 for t in stamps)


def test_more_readings_at_one_instant_than_tie_breaks_still_get_points() -> None:
    dec = make_decoder()
    res = dec.decode([msg([{"ts": NOW_MS, "seq": s, "values": {"lel": 1.0}}
                           for s in range(1500)])])
    assert res.readings == 1500 and len(set(points(res, dec))) == 1500


def test_a_redelivery_after_a_restart_lands_on_the_same_point() -> None:
    first = msg({"ts": NOW_MS, "seq": 1, "values": {"lel": 1.0}})
    second = msg({"ts": NOW_MS, "seq": 2, "values": {"lel": 2.0}})
    third = msg({"ts": NOW_MS, "values": {"lel": 3.0}})
    before = make_decoder()
    stored = points(before.decode([first, second, third]), before)
    assert len(set(stored)) == 3
    after = make_decoder()  # the service restarted; the broker redelivers the last two
    assert points(after.decode([second, third]), after) == stored[1:]


def test_fast_and_slow_timestamp_paths_give_the_same_identity_and_point() -> None:
    iso = _iso_ms(NOW_MS)
    forms: list[object] = [NOW_MS, float(NOW_MS), iso]
    stamps = set()
    for form in forms:
        dec = make_decoder()
        res = dec.decode([msg({"ts": form, "seq": 5, "values": {"lel": 1.0}})])
        stamps.update(points(res, dec))
    assert stamps == {NOW_MS * 1_000_000 + 5}
    for first in range(len(forms)):
        # one decoder: the same reading in another timestamp form is a duplicate
        dec = make_decoder()
        res = dec.decode([msg({"ts": f, "seq": 5, "values": {"lel": 1.0}})
                          for f in forms[first:] + forms[:first]])
        assert (res.readings, res.duplicates) == (1, 2)
        assert points(res, dec) == [NOW_MS * 1_000_000 + 5]


def test_a_seq_that_is_neither_int_nor_string_is_ignored() -> None:
    dec = make_decoder()
    res = dec.decode([msg({"ts": NOW_MS, "seq": 1.5, "values": {"lel": 1.0}})] * 2
                     + [msg({"ts": NOW_MS, "seq": [1], "values": {"lel": 2.0}})])
    assert (res.readings, res.duplicates) == (2, 1)
    assert len(set(points(res, dec))) == 2


def test_duplicates_take_no_point_and_without_dedup_every_delivery_gets_one() -> None:
    dec = make_decoder()
    reading = msg({"ts": NOW_MS, "seq": 9, "values": {"lel": 1.0}})
    res = dec.decode([reading, reading, msg({"ts": NOW_MS, "seq": 10, "values": {"lel": 1.0}})])
    assert res.duplicates == 1 and points(res, dec) == [NOW_MS * 1_000_000 + 9,
                                                        NOW_MS * 1_000_000 + 10]
    off = make_decoder(DecodeLimits(dedup_window=0))
    res = off.decode([reading, reading])
    assert res.readings == 2 and len(set(points(res, off))) == 2  # counted twice, stored twice


def test_thousands_of_readings_with_one_ts_cost_linear_work() -> None:
    """A stuck device clock (or a hostile device) sending 10,000 readings with one
    ``ts`` and colliding tie-breaks: each still gets a point, without quadratic probing."""
    dec = make_decoder(DecodeLimits(max_payload_bytes=4 << 20))

    class CountingPoints(PointMemory):
        probes = 0

        def take(self, device_id: str, point: int) -> bool:
            CountingPoints.probes += 1
            return super().take(device_id, point)

    dec.points = CountingPoints(200_000)
    body = [{"ts": NOW_MS, "seq": 1000 * s, "values": {"lel": 1.0}} for s in range(10_000)]
    res = dec.decode([msg(body)])
    assert res.readings == 10_000 and len(set(points(res, dec))) == 10_000
    # linear: about two probes a reading (quadratic probing would be ~50,000,000)
    assert CountingPoints.probes <= 3 * 10_000
    base = NOW_MS * 1_000_000
    assert sorted(points(res, dec))[:1000] == list(range(base, base + 1000))  # the µs first
