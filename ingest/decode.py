"""Turn raw MQTT messages into a columnar :class:`Batch` plus dead letters.

Decoding never raises on device input: every message either yields readings
or a :class:`DeadLetter` with a reason (or both, when only part of it is bad).

Identity of a reading (README "Ingest"). A reading is one telemetry object; it is
identified, per device, by its ``seq`` (an integer or a string; any other ``seq`` is
ignored) and its ``ts`` as sent (converted to ns), or, without ``seq``, by its ``ts``
and its ``values``; a reading with neither is only itself. A second reading with the
identity of one seen before is a duplicate: dropped and counted (:class:`Deduplicator`).

Every other reading gets an InfluxDB point of its own (InfluxDB keeps one point per
series and time): its time is the reading's ``ts`` plus a *tie-break* of 0-999 ns, a
function of the reading alone, so a resend lands on the same point even after a
restart: ``seq`` mod 1000 (a string ``seq``: its CRC-32 mod 1000), or, without ``seq``,
the CRC-32 of its values mod 1000. Sent times are whole microseconds (floats are
rounded to the µs), so the tie-break never reorders readings of different times. Two
readings whose tie-breaks coincide are kept apart by :class:`PointMemory`. A reading
without ``ts`` is stored at its receive time, or just after the readings of its
device received moments before (the position in its array). The rule engine judges
the time as sent (``Batch.ts_ns``), the writer stores ``Batch.point_ns``.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from devices.catalogue import Catalogue, MetricSpec
from devices.events import DeviceEvent, EventType, LinkState, StatusUpdate
from devices.model import Device
from devices.registry import DeviceLookup
from devices.series import SeriesTable
from devices.topics import DeviceTopic, TopicKind, TopicScheme
from ingest.batch import Batch, RawMessage, ReadingFlag
from ingest.deadletter import DeadLetter, Reason

log = logging.getLogger(__name__)

NS_PER_MS = 1_000_000
_TS_MISSING = int(ReadingFlag.TS_MISSING)
_CONVERTED = int(ReadingFlag.CONVERTED)
_OUT_OF_RANGE = int(ReadingFlag.OUT_OF_RANGE)
# Below this an epoch number is taken as seconds, not milliseconds (1973-03-03 in ms).
_SECONDS_CUTOFF = 100_000_000_000
_MAX_NS = 2**63 - 1
_MAX_MS = _MAX_NS // NS_PER_MS
TIE_BREAK_NS = 1000  # tie-breaks are 0..999 ns: below the µs, the finest a sent ts has
_POINT_MEMORY = 200_000  # point times remembered when de-duplication is off


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds applied while decoding."""

    max_payload_bytes: int = 256 * 1024
    max_future_ns: int = 5 * 60 * 1_000_000_000
    max_past_ns: int = 30 * 24 * 3600 * 1_000_000_000
    max_readings_per_message: int = 10_000
    dedup_window: int = 200_000  # remembered reading keys (0: no de-duplication)


@dataclass(slots=True)
class DecodeResult:
    """The readings and dead letters of one decoded batch of messages."""

    batch: Batch
    dead: list[DeadLetter] = field(default_factory=list)
    messages: int = 0
    readings: int = 0  # telemetry objects accepted (one InfluxDB point each)
    duplicates: int = 0  # telemetry objects dropped as duplicates (QoS 1 redelivery, resends)
    events: list[DeviceEvent] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)


class _Reject(Exception):  # noqa: N818 - internal control flow, never escapes
    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class Deduplicator:
    """Remembers recent reading keys (between ``capacity // 2`` and ``capacity``).

    A reading with ``seq`` is a duplicate of an earlier one from the same device with
    the same ``seq`` and the same ``ts`` as sent (a device that restarts its counter
    sends new timestamps, so its readings are kept). A reading without ``seq`` is a
    duplicate when device, ``ts`` and values are all equal; without ``ts`` there is
    nothing to tell a resend from a new reading, so it is kept.
    """

    __slots__ = ("_current", "_half", "_previous")

    def __init__(self, capacity: int) -> None:
        # Two generations (dicts: sets with insertion order, for :meth:`recent`): O(1) per
        # key and no per-key eviction. The last ``capacity // 2`` keys are always
        # remembered, at most ``capacity`` are.
        self._half = max(1, capacity // 2)
        self._current: dict[object, None] = {}
        self._previous: dict[object, None] = {}

    def seen(self, key: object) -> bool:
        """True if ``key`` was seen; otherwise remember it and return False."""
        current = self._current
        if key in current or key in self._previous:
            return True
        current[key] = None
        if len(current) >= self._half:
            self._previous = current
            self._current = {}
        return False

    def recent(self, n: int) -> list[object]:
        """The ``n`` most recently remembered keys, oldest first."""
        if n <= 0:
            return []
        keys = list(self._current)
        if len(keys) < n:
            keys = list(self._previous)[-(n - len(keys)):] + keys
        return keys[-n:]

    def remember(self, keys: Sequence[object]) -> None:
        """Remember ``keys`` (oldest first) as if they had been seen."""
        for key in keys:
            self.seen(key)

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)


def tie_break(seq: Any, values: Mapping[str, Any]) -> int:
    """A reading's tie-break in ns (0-999): a function of the reading alone.

    ``seq`` mod 1000 for an integer ``seq`` (readings of one instant keep their
    ``seq`` order), the CRC-32 of a string ``seq``, else the CRC-32 of the values.
    """
    if type(seq) is int:
        return seq % TIE_BREAK_NS
    if type(seq) is str:
        return zlib.crc32(seq.encode("utf-8", "surrogatepass")) % TIE_BREAK_NS
    try:
        canonical = orjson.dumps(values)
    except TypeError:  # ints past 64 bits, lone surrogates: parsed by the stdlib
        canonical = repr(values).encode("utf-8", "surrogatepass")
    return zlib.crc32(canonical) % TIE_BREAK_NS


class PointMemory:
    """The point times given out lately, per device (between ``capacity // 2`` and
    ``capacity``): two distinct readings never share an InfluxDB point.

    A reading with ``ts`` gets ``ts + tie-break`` unless that point is taken (two
    tie-breaks coincide, or two readings have no identity to tell them apart); then
    the first free one of the same µs, and past it only when all 1,000 are taken (a
    cursor per device and ``ts`` makes that O(1) per reading, also for a device that
    sends thousands of readings with one ``ts``). A reading without ``ts`` gets its
    receive time, or the point after the readings of its device whose receive-time
    run it falls in (an array, or messages received nanoseconds apart).
    """

    __slots__ = ("_current", "_cursors", "_half", "_previous", "_runs")

    def __init__(self, capacity: int) -> None:
        self._half = max(1, capacity // 2)
        self._current: set[tuple[str, int]] = set()
        self._previous: set[tuple[str, int]] = set()
        self._cursors: dict[tuple[str, int], int] = {}  # (device, ts): last offset probed
        self._runs: dict[str, tuple[int, int]] = {}  # device: (first, last) of the last run

    def take(self, device_id: str, point: int) -> bool:
        """Take ``point`` if it is free; False if it is taken."""
        key = (device_id, point)
        current = self._current
        if key in current or key in self._previous:
            return False
        current.add(key)
        if len(current) >= self._half:
            self._previous = current
            self._current = set()
            self._cursors.clear()
        return True

    def claim(self, device_id: str, ts_ns: int, tie: int) -> int:
        """The point of a reading sent at ``ts_ns`` with tie-break ``tie``."""
        point = ts_ns + tie
        if self.take(device_id, point):
            return point
        group = (device_id, ts_ns)
        offset = self._cursors.get(group, -1)
        while True:  # below TIE_BREAK_NS inside the µs, then past it
            offset += 1
            point = ts_ns + offset
            if self.take(device_id, point):
                break
        self._cursors[group] = offset
        return point

    def after_receive(self, device_id: str, received_at_ns: int) -> int:
        """The point of a reading without ``ts`` received at ``received_at_ns``."""
        run = self._runs.get(device_id)
        if run is not None and run[0] <= received_at_ns <= run[1]:
            first, point = run[0], run[1] + 1
        else:
            first = point = received_at_ns
        while not self.take(device_id, point):
            point += 1
        self._runs[device_id] = (first, point)
        return point


# Per device: the device object it was built for and {metric: (series id, spec)}.
# Per metric: (series id, spec, spec.low, spec.high) — the bounds unpacked for the hot loop.
_MetricCache = tuple[Device, dict[str, tuple[int, MetricSpec, float, float]],
                     Mapping[str, MetricSpec]]


class Decoder:
    """Decodes batches of raw messages against the registry and catalogue."""

    def __init__(
        self,
        scheme: TopicScheme,
        registry: DeviceLookup,
        catalogue: Catalogue,
        series: SeriesTable,
        limits: DecodeLimits | None = None,
    ) -> None:
        self.scheme = scheme
        self.registry = registry
        self.catalogue = catalogue
        self.series = series
        self.limits = limits or DecodeLimits()
        self.dedup = Deduplicator(self.limits.dedup_window) if self.limits.dedup_window else None
        self.points = PointMemory(self.limits.dedup_window or _POINT_MEMORY)
        self._topics: dict[str, DeviceTopic | None] = {}
        self._metric_cache: dict[str, _MetricCache] = {}

    def decode(self, messages: Sequence[RawMessage]) -> DecodeResult:
        """Decode ``messages``; never raises on message content."""
        sid: list[int] = []
        ts: list[int] = []
        val: list[float] = []
        flg: list[int] = []
        pts: list[int] = []
        result = DecodeResult(batch=Batch.empty(), messages=len(messages))
        for msg in messages:
            try:
                self._decode_one(msg, sid, ts, val, flg, pts, result)
            except _Reject as rej:
                result.dead.append(
                    DeadLetter(msg.topic, msg.payload, rej.reason, rej.detail, msg.received_at_ns)
                )
            except Exception as exc:  # a decoder bug must not stop ingestion or lose the message
                log.exception("decoder error on topic %s", msg.topic[:200])
                result.dead.append(
                    DeadLetter(msg.topic, msg.payload, Reason.BAD_SHAPE,
                               f"decoder error: {type(exc).__name__}: {str(exc)[:200]}",
                               msg.received_at_ns)
                )
        result.batch = Batch.from_lists(sid, ts, val, flg, pts)
        return result

    def _parse_topic(self, topic: str) -> DeviceTopic | None:
        cache = self._topics
        try:
            return cache[topic]
        except KeyError:
            pass
        parsed = self.scheme.parse(topic)
        if len(cache) >= 200_000:
            cache.clear()
        cache[topic] = parsed
        return parsed

    def _metrics_for(self, device: Device) -> _MetricCache:
        cached = self._metric_cache.get(device.id)
        if cached is not None and cached[0] is device:
            return cached
        dtype = self.catalogue.types.get(device.type)
        if dtype is None:
            raise _Reject(Reason.UNKNOWN_DEVICE, f"device type {device.type!r} not in catalogue")
        entry: _MetricCache = (device, {}, dtype.metrics)
        self._metric_cache[device.id] = entry
        return entry

    def _decode_one(
        self,
        msg: RawMessage,
        sid: list[int],
        ts: list[int],
        val: list[float],
        flg: list[int],
        pts: list[int],
        result: DecodeResult,
    ) -> None:
        parsed = self._parse_topic(msg.topic)
        if parsed is None:
            raise _Reject(Reason.BAD_TOPIC, "topic outside the scheme")
        if len(msg.payload) > self.limits.max_payload_bytes:
            raise _Reject(
                Reason.OVERSIZED,
                f"{len(msg.payload)} bytes > limit {self.limits.max_payload_bytes}",
            )
        device = self.registry.get(parsed.device_id)
        if device is None:
            raise _Reject(Reason.UNKNOWN_DEVICE, f"device {parsed.device_id!r} not registered")
        kind = parsed.kind
        body = _loads(msg.payload, kind)
        if kind is TopicKind.STATUS:
            result.statuses.append(_status(device, body, msg.received_at_ns))
            return
        if kind is TopicKind.EVENT:
            result.events.append(self._event(device, body, msg.received_at_ns))
            return
        cache = self._metrics_for(device)
        if type(body) is dict:
            try:
                accepted, bad = self._decode_object(body, cache, msg.received_at_ns,
                                                    sid, ts, val, flg, pts)
            except _Reject as rej:
                raise _Reject(rej.reason, f"[0] {rej.detail}") from None
            if accepted < 0:
                result.duplicates += 1
            else:
                result.readings += accepted
            if bad:
                raise _Reject(bad[0][0], "; ".join(f"[0] {d}" for _, d in bad[:10]))
            return
        objects = body if isinstance(body, list) else [body]
        if not objects:
            raise _Reject(Reason.BAD_SHAPE, "empty array")
        if len(objects) > self.limits.max_readings_per_message:
            raise _Reject(Reason.OVERSIZED, f"{len(objects)} readings in one message")
        problems: list[tuple[Reason, str]] = []
        for index, obj in enumerate(objects):
            try:
                accepted, bad = self._decode_object(
                    obj, cache, msg.received_at_ns, sid, ts, val, flg, pts
                )
            except _Reject as rej:
                problems.append((rej.reason, f"[{index}] {rej.detail}"))
                continue
            if accepted < 0:
                result.duplicates += 1
            else:
                result.readings += accepted
            if bad:
                problems.extend((reason, f"[{index}] {detail}") for reason, detail in bad)
        if problems:
            reason = problems[0][0]
            detail = "; ".join(d for _, d in problems[:10])
            raise _Reject(reason, detail)

    def _decode_object(
        self,
        obj: Any,
        cache: _MetricCache,
        received_at_ns: int,
        sid: list[int],
        ts: list[int],
        val: list[float],
        flg: list[int],
        pts: list[int],
    ) -> tuple[int, list[tuple[Reason, str]] | None]:
        """Append the object's values; returns (1 accepted | 0 nothing | -1 duplicate, problems)."""
        if type(obj) is not dict:
            raise _Reject(Reason.BAD_SHAPE, f"reading is {type(obj).__name__}, not an object")
        values = obj.get("values")
        if type(values) is not dict or not values:
            raise _Reject(Reason.BAD_SHAPE, "'values' must be a non-empty object")
        flags = 0
        raw_ts = obj.get("ts")
        limits = self.limits
        if (type(raw_ts) is int and _SECONDS_CUTOFF <= raw_ts < _MAX_MS
                and -limits.max_past_ns <= raw_ts * NS_PER_MS - received_at_ns
                <= limits.max_future_ns):
            ts_ns = raw_ts * NS_PER_MS  # the common case: epoch ms in bounds
        else:
            maybe_ts = self._timestamp(raw_ts, received_at_ns)  # others, and every rejection
            if maybe_ts is None:
                ts_ns = received_at_ns
                flags = _TS_MISSING
            else:
                ts_ns = maybe_ts
        units = obj.get("units")
        if units is not None and type(units) is not dict:
            raise _Reject(Reason.BAD_SHAPE, "'units' must be an object")
        device, specs, metrics = cache
        dedup = self.dedup
        seq = obj.get("seq")
        if dedup is not None and (raw_ts is not None or seq is not None):
            key = _dedup_key(device.id, seq, ts_ns if raw_ts is not None else None, values)
            if key is not None and dedup.seen(key):
                return -1, None
        bad: list[tuple[Reason, str]] | None = None
        accepted = 0
        point = -1  # taken at the first value accepted
        for name, raw in values.items():
            entry = specs.get(name)
            if entry is None:
                spec = metrics.get(name)
                if spec is None:
                    bad = bad or []
                    bad.append((Reason.UNKNOWN_METRIC, f"unknown metric {name[:64]!r}"))
                    continue
                entry = (self.series.id_for(device, name), spec, spec.low, spec.high)
                specs[name] = entry
            series_id, spec, low, high = entry
            rtype = type(raw)
            if rtype is float:
                number = raw
                if number - number != 0.0:  # NaN or +-Inf
                    bad = bad or []
                    bad.append((Reason.NON_FINITE, f"{name}: {number}"))
                    continue
            else:
                maybe = _number(raw)
                if maybe is None:
                    bad = bad or []
                    bad.append((Reason.BAD_VALUE, f"{name}: not a number"))
                    continue
                if not math.isfinite(maybe):
                    bad = bad or []
                    bad.append((Reason.NON_FINITE, f"{name}: {maybe}"))
                    continue
                number = maybe
            vflags = flags
            if units:
                unit = units.get(name)
                if unit is not None:
                    factor = spec.factor(unit) if isinstance(unit, str) else None
                    if factor is None:
                        bad = bad or []
                        bad.append((Reason.BAD_UNIT, f"{name}: unit {str(unit)[:32]!r}"))
                        continue
                    if factor != 1.0:
                        number *= factor
                        vflags |= _CONVERTED
                        if not math.isfinite(number):
                            bad = bad or []
                            bad.append((Reason.NON_FINITE, f"{name}: {number} after conversion"))
                            continue
            if not low <= number <= high:
                vflags |= _OUT_OF_RANGE
            if point < 0:
                if flags:
                    point = self.points.after_receive(device.id, received_at_ns)
                else:  # the common case inlined: an int seq, a free point
                    tie = seq % TIE_BREAK_NS if type(seq) is int else tie_break(seq, values)
                    point = ts_ns + tie
                    if not self.points.take(device.id, point):
                        point = self.points.claim(device.id, ts_ns, tie)
            sid.append(series_id)
            ts.append(ts_ns)
            val.append(number)
            flg.append(vflags)
            pts.append(point)
            accepted = 1
        return accepted, bad

    def _event(self, device: Device, body: Any, received_at_ns: int) -> DeviceEvent:
        if not isinstance(body, dict):
            raise _Reject(Reason.BAD_SHAPE, "an event must be an object")
        try:
            etype = EventType(str(body.get("type")))
        except ValueError as exc:
            kind = str(body.get("type"))[:32]
            raise _Reject(Reason.BAD_SHAPE, f"unknown event type {kind!r}") from exc
        ts_ns = self._timestamp(body.get("ts"), received_at_ns)
        level = body.get("level")
        if level is not None and (isinstance(level, bool) or not isinstance(level, int)
                                  or not 0 <= level <= 9):
            raise _Reject(Reason.BAD_VALUE, f"event level {str(level)[:16]!r}")
        metric = body.get("metric")
        if metric is not None and (not isinstance(metric, str) or
                                   metric not in self.catalogue.types[device.type].metrics):
            raise _Reject(Reason.UNKNOWN_METRIC, f"event metric {str(metric)[:64]!r}")
        value = None
        if body.get("value") is not None:
            value = _number(body["value"])
            if value is None:
                raise _Reject(Reason.BAD_VALUE, "event value: not a number")
            if not math.isfinite(value):
                raise _Reject(Reason.NON_FINITE, f"event value {value}")
        return DeviceEvent(device_id=device.id, ts_ns=ts_ns or received_at_ns, type=etype,
                           level=level, metric=metric, value=value, ts_missing=ts_ns is None)

    def _timestamp(self, raw: Any, received_at_ns: int) -> int | None:
        if raw is None:
            return None
        if type(raw) is int and _SECONDS_CUTOFF <= raw < _MAX_MS:  # the common case: epoch ms
            ts_ns = raw * NS_PER_MS
            if ts_ns - received_at_ns > self.limits.max_future_ns:
                raise _Reject(Reason.TS_FUTURE, f"ts {ts_ns} is too far in the future")
            if received_at_ns - ts_ns > self.limits.max_past_ns:
                raise _Reject(Reason.TS_PAST, f"ts {ts_ns} is too far in the past")
            return ts_ns
        if isinstance(raw, bool):
            raise _Reject(Reason.BAD_TIMESTAMP, "ts is a boolean")
        if isinstance(raw, int | float):
            # isfinite() of an int past a float's range raises: ints are finite anyway
            if raw < 0 or (type(raw) is float and not math.isfinite(raw)):
                raise _Reject(Reason.BAD_TIMESTAMP, f"ts {raw!r}")
            seconds = raw < _SECONDS_CUTOFF
            scaled = raw * (1_000_000_000 if seconds else NS_PER_MS)
            if scaled >= _MAX_NS:
                raise _Reject(Reason.TS_FUTURE, f"ts {raw!r} is too far in the future")
            # a float is taken to the µs: the ns below are the reading's tie-break
            ts_ns = (int(scaled) if type(raw) is int
                     else round(raw * (1_000_000 if seconds else 1000)) * 1000)
        elif isinstance(raw, str):
            try:
                parsed = datetime.fromisoformat(raw[:64])
            except ValueError as exc:
                raise _Reject(Reason.BAD_TIMESTAMP, f"ts {raw[:64]!r}") from exc
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            ts_ns = int(parsed.timestamp() * 1_000_000) * 1000
        else:
            raise _Reject(Reason.BAD_TIMESTAMP, f"ts is {type(raw).__name__}")
        if ts_ns - received_at_ns > self.limits.max_future_ns:
            raise _Reject(Reason.TS_FUTURE, f"ts {ts_ns} is too far in the future")
        if received_at_ns - ts_ns > self.limits.max_past_ns:
            raise _Reject(Reason.TS_PAST, f"ts {ts_ns} is too far in the past")
        return ts_ns


def _dedup_key(device_id: str, seq: Any, ts_ns: int | None, values: dict[str, Any]) -> object:
    """The reading's identity: the key a resend of it would have; None when there is none
    (no ``ts`` and no ``seq``, or values that cannot be hashed). A ``seq`` that is neither
    an integer nor a string is ignored."""
    if type(seq) is int or type(seq) is str:
        return (device_id, seq, ts_ns)
    if ts_ns is None:
        return None
    key = (device_id, ts_ns, tuple(values.items()))
    try:
        hash(key)
    except TypeError:  # lists or objects among the values: no cheap identity
        return None
    return key


def keys_to_json(keys: Sequence[object]) -> bytes:
    """De-duplication keys (:meth:`Deduplicator.recent`) as a JSON document."""
    return orjson.dumps(keys)


def keys_from_json(document: bytes) -> list[object]:
    """The keys of :func:`keys_to_json`, hashable again; malformed entries are skipped."""
    out: list[object] = []
    try:
        items = orjson.loads(document)
    except orjson.JSONDecodeError:
        return out
    if not isinstance(items, list):
        return out
    for item in items:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            continue
        device, second, third = item
        if isinstance(third, list):  # (device, ts, ((name, value), ...))
            try:
                key: object = (device, second, tuple(tuple(p) for p in third))
                hash(key)
            except TypeError:
                continue
            out.append(key)
        elif (type(second) is int or type(second) is str) and (
                third is None or type(third) is int):
            out.append((device, second, third))
    return out


def _loads(payload: bytes, kind: TopicKind) -> Any:
    if kind is TopicKind.STATUS and payload.strip() in (b"online", b"offline"):
        return payload.strip().decode()
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        first_error = exc
    # Devices built on lenient encoders send NaN/Infinity literals or huge numbers:
    # parse those with the stdlib so they get their own reason instead of not_json.
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        raise _Reject(Reason.NOT_JSON, str(first_error)[:200]) from first_error


def _status(device: Device, body: Any, received_at_ns: int) -> StatusUpdate:
    if isinstance(body, str):
        if body not in LinkState.__members__.values():
            raise _Reject(Reason.BAD_SHAPE, f"status {body[:32]!r}")
        return StatusUpdate(device.id, received_at_ns, LinkState(body))
    if not isinstance(body, dict):
        raise _Reject(Reason.BAD_SHAPE, "status must be 'online', 'offline' or an object")
    try:
        state = LinkState(str(body.get("state")))
    except ValueError as exc:
        raise _Reject(Reason.BAD_SHAPE, f"status state {str(body.get('state'))[:32]!r}") from exc
    fw = body.get("fw")
    rssi = _number(body.get("rssi")) if body.get("rssi") is not None else None
    return StatusUpdate(device.id, received_at_ns, state,
                        firmware=fw[:64] if isinstance(fw, str) else None,
                        rssi=rssi if rssi is not None and math.isfinite(rssi) else None)


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        try:
            return float(raw)
        except OverflowError:
            return math.inf
    return None
