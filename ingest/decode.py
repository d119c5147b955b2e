"""Turn raw MQTT messages into a columnar :class:`Batch` plus dead letters.

Decoding never raises on device input: every message either yields readings
or a :class:`DeadLetter` with a reason (or both, when only part of it is bad).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from devices.catalogue import Catalogue
from devices.events import DeviceEvent, EventType, LinkState, StatusUpdate
from devices.model import Device
from devices.registry import DeviceLookup
from devices.series import SeriesTable
from devices.topics import TopicKind, TopicScheme
from ingest.batch import Batch, RawMessage, ReadingFlag
from ingest.deadletter import DeadLetter, Reason

NS_PER_MS = 1_000_000
# Below this an epoch number is taken as seconds, not milliseconds (1973-03-03 in ms).
_SECONDS_CUTOFF = 100_000_000_000
_MAX_NS = 2**63 - 1


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds applied while decoding."""

    max_payload_bytes: int = 256 * 1024
    max_future_ns: int = 5 * 60 * 1_000_000_000
    max_past_ns: int = 30 * 24 * 3600 * 1_000_000_000
    max_readings_per_message: int = 10_000


@dataclass(slots=True)
class DecodeResult:
    """The readings and dead letters of one decoded batch of messages."""

    batch: Batch
    dead: list[DeadLetter] = field(default_factory=list)
    messages: int = 0
    readings: int = 0  # telemetry objects accepted (one InfluxDB point each)
    events: list[DeviceEvent] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)


class _Reject(Exception):  # noqa: N818 - internal control flow, never escapes
    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


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

    def decode(self, messages: Sequence[RawMessage]) -> DecodeResult:
        """Decode ``messages``; never raises on message content."""
        sid: list[int] = []
        ts: list[int] = []
        val: list[float] = []
        flg: list[int] = []
        result = DecodeResult(batch=Batch.empty(), messages=len(messages))
        for msg in messages:
            try:
                self._decode_one(msg, sid, ts, val, flg, result)
            except _Reject as rej:
                result.dead.append(
                    DeadLetter(msg.topic, msg.payload, rej.reason, rej.detail, msg.received_at_ns)
                )
        result.batch = Batch.from_lists(sid, ts, val, flg)
        return result

    def _decode_one(
        self,
        msg: RawMessage,
        sid: list[int],
        ts: list[int],
        val: list[float],
        flg: list[int],
        result: DecodeResult,
    ) -> None:
        parsed = self.scheme.parse(msg.topic)
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
        body = _loads(msg.payload, parsed.kind)
        if parsed.kind is TopicKind.STATUS:
            result.statuses.append(_status(device, body, msg.received_at_ns))
            return
        if parsed.kind is TopicKind.EVENT:
            result.events.append(self._event(device, body, msg.received_at_ns))
            return
        objects = body if isinstance(body, list) else [body]
        if not objects:
            raise _Reject(Reason.BAD_SHAPE, "empty array")
        if len(objects) > self.limits.max_readings_per_message:
            raise _Reject(Reason.OVERSIZED, f"{len(objects)} readings in one message")
        dtype = self.catalogue.types.get(device.type)
        if dtype is None:
            raise _Reject(Reason.UNKNOWN_DEVICE, f"device type {device.type!r} not in catalogue")
        problems: list[tuple[Reason, str]] = []
        for index, obj in enumerate(objects):
            try:
                accepted, bad = self._decode_object(
                    obj, device, msg.received_at_ns, sid, ts, val, flg
                )
            except _Reject as rej:
                problems.append((rej.reason, f"[{index}] {rej.detail}"))
                continue
            result.readings += accepted
            problems.extend((reason, f"[{index}] {detail}") for reason, detail in bad)
        if problems:
            reason = problems[0][0]
            detail = "; ".join(d for _, d in problems[:10])
            raise _Reject(reason, detail)

    def _decode_object(
        self,
        obj: Any,
        device: Device,
        received_at_ns: int,
        sid: list[int],
        ts: list[int],
        val: list[float],
        flg: list[int],
    ) -> tuple[int, list[tuple[Reason, str]]]:
        bad: list[tuple[Reason, str]] = []
        if not isinstance(obj, dict):
            raise _Reject(Reason.BAD_SHAPE, f"reading is {type(obj).__name__}, not an object")
        values = obj.get("values")
        if not isinstance(values, dict) or not values:
            raise _Reject(Reason.BAD_SHAPE, "'values' must be a non-empty object")
        flags = ReadingFlag.NONE
        ts_ns = self._timestamp(obj.get("ts"), received_at_ns)
        if ts_ns is None:
            ts_ns = received_at_ns
            flags |= ReadingFlag.TS_MISSING
        units = obj.get("units")
        if units is not None and not isinstance(units, dict):
            raise _Reject(Reason.BAD_SHAPE, "'units' must be an object")
        metrics = self.catalogue.types[device.type].metrics
        accepted = 0
        for name, raw in values.items():
            spec = metrics.get(name)
            if spec is None:
                bad.append((Reason.UNKNOWN_METRIC, f"unknown metric {name[:64]!r}"))
                continue
            number = _number(raw)
            if number is None:
                bad.append((Reason.BAD_VALUE, f"{name}: not a number"))
                continue
            if not math.isfinite(number):
                bad.append((Reason.NON_FINITE, f"{name}: {number}"))
                continue
            vflags = flags
            unit = units.get(name) if units else None
            if unit is not None:
                factor = spec.factor(unit) if isinstance(unit, str) else None
                if factor is None:
                    bad.append((Reason.BAD_UNIT, f"{name}: unit {unit!r}"))
                    continue
                if factor != 1.0:
                    number *= factor
                    vflags |= ReadingFlag.CONVERTED
            if not spec.low <= number <= spec.high:
                vflags |= ReadingFlag.OUT_OF_RANGE
            sid.append(self.series.id_for(device, name))
            ts.append(ts_ns)
            val.append(number)
            flg.append(int(vflags))
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
        if isinstance(raw, bool):
            raise _Reject(Reason.BAD_TIMESTAMP, "ts is a boolean")
        if isinstance(raw, int | float):
            if not math.isfinite(raw) or raw < 0:
                raise _Reject(Reason.BAD_TIMESTAMP, f"ts {raw!r}")
            scaled = raw * (1_000_000_000 if raw < _SECONDS_CUTOFF else NS_PER_MS)
            if scaled >= _MAX_NS:
                raise _Reject(Reason.TS_FUTURE, f"ts {raw!r} is too far in the future")
            ts_ns = int(scaled)
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
