"""The device registry in the service database (SQLite or PostgreSQL, SQLAlchemy 2).

Tables are created by versioned migrations (``MIGRATIONS``, applied by the
service's migration runner), so an upgrade adds and never loses data.
Deleting a device is a soft delete: the row stays, marked deleted, and a later
import or create brings it back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from devices.errors import DevicesError
from devices.events import DeviceEvent
from devices.model import Device
from devices.status import DeviceState, LinkStatus, StatusChange

log = logging.getLogger(__name__)

metadata = sa.MetaData()

devices_table = sa.Table(
    "devices", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False, default=""),
    sa.Column("grid", sa.String(64), nullable=False, default="", index=True),
    sa.Column("district", sa.String(64), nullable=False, default="", index=True),
    sa.Column("unit", sa.String(128), nullable=False, default="", index=True),
    sa.Column("dma", sa.String(64), nullable=False, default=""),
    sa.Column("lat", sa.Float, nullable=True),
    sa.Column("lon", sa.Float, nullable=True),
    sa.Column("address", sa.String(500), nullable=False, default=""),
    sa.Column("install_date", sa.Date, nullable=True),
    sa.Column("interval_s", sa.Float, nullable=True),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("tags", sa.Text, nullable=False, default="[]"),
    sa.Column("limits", sa.Text, nullable=False, default="{}"),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False, index=True),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    sa.Column("updated_ns", sa.BigInteger, nullable=False),
)

status_table = sa.Table(
    "device_status", metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("link", sa.String(16), nullable=False),
    sa.Column("since_ns", sa.BigInteger, nullable=False),
    sa.Column("last_seen_ns", sa.BigInteger, nullable=True),
    sa.Column("reason", sa.String(32), nullable=False, default=""),
    sa.Column("battery_low", sa.Boolean, nullable=False, default=False),
    sa.Column("weak_signal", sa.Boolean, nullable=False, default=False),
    sa.Column("battery", sa.Float, nullable=True),
    sa.Column("rssi", sa.Float, nullable=True),
    sa.Column("firmware", sa.String(64), nullable=True),
)

changes_table = sa.Table(
    "device_status_changes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False, index=True),
    sa.Column("ts_ns", sa.BigInteger, nullable=False),
    sa.Column("change", sa.String(32), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False, default=""),
)

events_table = sa.Table(
    "device_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False, index=True),
    sa.Column("ts_ns", sa.BigInteger, nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("level", sa.Integer, nullable=True),
    sa.Column("metric", sa.String(64), nullable=True),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("ts_missing", sa.Boolean, nullable=False, default=False),
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[devices_table])


def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[status_table, changes_table, events_table])


# (version, description, upgrade): applied by the service's migration runner.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "devices table", _v1),
    (2, "device status, status changes and device events", _v2),
]

_CHUNK = 500


class DeviceStoreError(DevicesError):
    """The device registry refused an operation."""


class DeviceExistsError(DeviceStoreError):
    """A device with that id is already registered."""


class DeviceNotFoundError(DeviceStoreError):
    """No (undeleted) device has that id."""


@dataclass(frozen=True, slots=True)
class UpsertCounts:
    """What an import did."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """List filters; None means any."""

    type: str | None = None
    grid: str | None = None
    district: str | None = None
    unit: str | None = None
    status: LinkStatus | None = None
    enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A device-side event as stored, with the severity it was mapped to."""

    id: int
    event: DeviceEvent
    severity: str


def _row(device: Device, now_ns: int) -> dict[str, Any]:
    return {
        "id": device.id, "type": device.type, "name": device.name, "grid": device.grid,
        "district": device.district, "unit": device.unit, "dma": device.dma,
        "lat": device.lat, "lon": device.lon, "address": device.address,
        "install_date": device.install_date, "interval_s": device.interval_s,
        "enabled": device.enabled, "tags": json.dumps(list(device.tags), ensure_ascii=False),
        "limits": json.dumps(device.limits, sort_keys=True), "deleted": False,
        "updated_ns": now_ns,
    }


def _device(row: Any) -> Device:
    install = row.install_date
    if isinstance(install, str):  # pragma: no cover - drivers return date objects
        install = date.fromisoformat(install)
    return Device(
        id=row.id, type=row.type, grid=row.grid, district=row.district, unit=row.unit,
        name=row.name, limits=json.loads(row.limits), lat=row.lat, lon=row.lon,
        address=row.address, dma=row.dma, install_date=install,
        tags=tuple(json.loads(row.tags)), enabled=bool(row.enabled), interval_s=row.interval_s,
    )


def _state(row: Any) -> DeviceState:
    return DeviceState(
        device_id=row.device_id, link=LinkStatus(row.link), since_ns=row.since_ns,
        last_seen_ns=row.last_seen_ns, reason=row.reason, battery_low=bool(row.battery_low),
        weak_signal=bool(row.weak_signal), battery=row.battery, rssi=row.rssi,
        firmware=row.firmware,
    )


class DeviceStore:
    """Devices, their status and their events in the service database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ devices

    def get(self, device_id: str, *, include_deleted: bool = False) -> Device | None:
        """The device with ``device_id``, or None."""
        query = sa.select(devices_table).where(devices_table.c.id == device_id)
        if not include_deleted:
            query = query.where(devices_table.c.deleted.is_(False))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _device(row) if row is not None else None

    def all(self, *, enabled_only: bool = False) -> list[Device]:
        """Every undeleted device, by id."""
        query = sa.select(devices_table).where(devices_table.c.deleted.is_(False))
        if enabled_only:
            query = query.where(devices_table.c.enabled.is_(True))
        with self.engine.connect() as conn:
            return [_device(r) for r in conn.execute(query.order_by(devices_table.c.id))]

    def query(self, filters: DeviceFilter | None = None, *, offset: int = 0,
             limit: int = 100) -> tuple[list[Device], int]:
        """One page of undeleted devices matching ``filters`` and the total count."""
        f = filters or DeviceFilter()
        t = devices_table
        conds: list[Any] = [t.c.deleted.is_(False)]
        for column, value in (("type", f.type), ("grid", f.grid), ("district", f.district),
                              ("unit", f.unit)):
            if value is not None:
                conds.append(t.c[column] == value)
        if f.enabled is not None:
            conds.append(t.c.enabled.is_(f.enabled))
        base: Any = t
        if f.status is not None:
            base = t.outerjoin(status_table, status_table.c.device_id == t.c.id)
            if f.status is LinkStatus.UNKNOWN:
                conds.append(sa.or_(status_table.c.link.is_(None),
                                    status_table.c.link == LinkStatus.UNKNOWN.value))
            else:
                conds.append(status_table.c.link == f.status.value)
        where = sa.and_(*conds)
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(base)
                                 .where(where)).scalar_one()
            rows = conn.execute(sa.select(t).select_from(base).where(where)
                                .order_by(t.c.id).offset(offset).limit(limit))
            return [_device(r) for r in rows], int(total)

    def create(self, device: Device) -> Device:
        """Register a new device (a soft-deleted one with the same id is replaced)."""
        now = time.time_ns()
        with self.engine.begin() as conn:
            existing = conn.execute(sa.select(devices_table.c.deleted)
                                    .where(devices_table.c.id == device.id)).first()
            if existing is not None and not existing.deleted:
                raise DeviceExistsError(f"device {device.id!r} already exists")
            if existing is None:
                conn.execute(devices_table.insert().values(**_row(device, now), created_ns=now))
            else:
                conn.execute(devices_table.update().where(devices_table.c.id == device.id)
                             .values(**_row(device, now), created_ns=now))
        log.info("device created device=%s type=%s", device.id, device.type)
        return device

    def replace(self, device: Device) -> Device:
        """Store new fields for an existing (undeleted) device."""
        with self.engine.begin() as conn:
            result = conn.execute(
                devices_table.update()
                .where(devices_table.c.id == device.id, devices_table.c.deleted.is_(False))
                .values(**_row(device, time.time_ns())))
            if result.rowcount == 0:
                raise DeviceNotFoundError(f"device {device.id!r} not found")
        return device

    def delete(self, device_id: str) -> bool:
        """Soft-delete; False when there was no such (undeleted) device."""
        with self.engine.begin() as conn:
            result = conn.execute(
                devices_table.update()
                .where(devices_table.c.id == device_id, devices_table.c.deleted.is_(False))
                .values(deleted=True, updated_ns=time.time_ns()))
        if result.rowcount:
            log.info("device deleted device=%s", device_id)
        return bool(result.rowcount)

    def upsert_many(self, devices: Sequence[Device]) -> UpsertCounts:
        """Create or update ``devices`` in one transaction (idempotent)."""
        now = time.time_ns()
        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        unchanged = 0
        with self.engine.begin() as conn:
            if len(devices) > _CHUNK:
                # a large import: one scan of the table beats many IN lists (PostgreSQL
                # plans those as sequential scans until the table has statistics)
                everything = {r.id: r for r in conn.execute(sa.select(devices_table))}
            for start in range(0, len(devices), _CHUNK):
                chunk = devices[start:start + _CHUNK]
                existing = everything if len(devices) > _CHUNK else {
                    r.id: r for r in conn.execute(
                        sa.select(devices_table)
                        .where(devices_table.c.id.in_([d.id for d in chunk])))
                }
                for d in chunk:
                    row = existing.get(d.id)
                    if row is None:
                        created.append({**_row(d, now), "created_ns": now})
                    elif row.deleted or _device(row) != d:
                        updated.append({**_row(d, now), "b_id": d.id})
                    else:
                        unchanged += 1
            if created:
                conn.execute(devices_table.insert(), created)
            if updated:
                values: dict[str, Any] = {k: sa.bindparam(k) for k in updated[0] if k != "b_id"}
                conn.execute(devices_table.update()
                             .where(devices_table.c.id == sa.bindparam("b_id"))
                             .values(**values), updated)
        counts = UpsertCounts(len(created), len(updated), unchanged)
        log.info("devices upserted created=%d updated=%d unchanged=%d",
                 counts.created, counts.updated, counts.unchanged)
        return counts

    def count(self) -> int:
        """Number of undeleted devices."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(devices_table)
                                    .where(devices_table.c.deleted.is_(False))).scalar_one())

    # ------------------------------------------------------------------ status

    def save_states(self, states: Iterable[DeviceState]) -> int:
        """Insert or update the current status of devices."""
        rows = [{
            "device_id": s.device_id, "link": s.link.value, "since_ns": s.since_ns,
            "last_seen_ns": s.last_seen_ns, "reason": s.reason[:32],
            "battery_low": s.battery_low, "weak_signal": s.weak_signal, "battery": s.battery,
            "rssi": s.rssi, "firmware": s.firmware,
        } for s in states]
        if not rows:
            return 0
        with self.engine.begin() as conn:
            known: set[str] | None = None
            if len(rows) > _CHUNK:  # one scan beats many IN lists (see upsert_many)
                known = set(conn.execute(sa.select(status_table.c.device_id)).scalars())
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start:start + _CHUNK]
                ids = [r["device_id"] for r in chunk]
                present = known if known is not None else set(
                    conn.execute(sa.select(status_table.c.device_id)
                                 .where(status_table.c.device_id.in_(ids))).scalars())
                new = [r for r in chunk if r["device_id"] not in present]
                old = [{**r, "b_id": r["device_id"]} for r in chunk if r["device_id"] in present]
                if new:
                    conn.execute(status_table.insert(), new)
                if old:
                    values: dict[str, Any] = {k: sa.bindparam(k) for k in rows[0]
                                              if k != "device_id"}
                    conn.execute(status_table.update()
                                 .where(status_table.c.device_id == sa.bindparam("b_id"))
                                 .values(**values), old)
        return len(rows)

    def states(self, device_ids: Iterable[str] | None = None) -> dict[str, DeviceState]:
        """Stored status by device id (all, or those of ``device_ids``)."""
        query = sa.select(status_table)
        if device_ids is not None:
            query = query.where(status_table.c.device_id.in_(list(device_ids)))
        with self.engine.connect() as conn:
            return {r.device_id: _state(r) for r in conn.execute(query)}

    def add_changes(self, changes: Iterable[StatusChange]) -> int:
        """Record status changes (online, offline, battery_low, ...)."""
        rows = [{"device_id": c.device_id, "ts_ns": c.ts_ns, "change": c.change.value,
                 "reason": c.reason[:64]} for c in changes]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(changes_table.insert(), rows)
        return len(rows)

    def changes(self, device_id: str, limit: int = 100) -> list[StatusChange]:
        """A device's status changes, newest first."""
        from devices.status import Change  # noqa: PLC0415 - keeps the import list short

        query = (sa.select(changes_table).where(changes_table.c.device_id == device_id)
                 .order_by(changes_table.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [StatusChange(r.device_id, r.ts_ns, Change(r.change), r.reason)
                    for r in conn.execute(query)]

    # ------------------------------------------------------------------ events

    def add_events(self, events: Iterable[tuple[DeviceEvent, str]]) -> int:
        """Store device-side events with the severity they were mapped to."""
        rows = [{"device_id": e.device_id, "ts_ns": e.ts_ns, "type": e.type.value,
                 "level": e.level, "metric": e.metric, "value": e.value, "severity": sev,
                 "ts_missing": e.ts_missing} for e, sev in events]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(events_table.insert(), rows)
        return len(rows)

    def events(self, device_id: str, limit: int = 100) -> list[StoredEvent]:
        """A device's stored events, newest first."""
        from devices.events import EventType  # noqa: PLC0415

        query = (sa.select(events_table).where(events_table.c.device_id == device_id)
                 .order_by(events_table.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [StoredEvent(r.id, DeviceEvent(r.device_id, r.ts_ns, EventType(r.type),
                                                  r.level, r.metric, r.value,
                                                  bool(r.ts_missing)), r.severity)
                    for r in conn.execute(query)]


class CachedRegistry:
    """The hot-path lookup: enabled devices in memory, reloaded from a :class:`DeviceStore`.

    ``get`` is a dict lookup; ``refresh`` swaps in a new dict and keeps the same
    object for unchanged devices (series keep their cached tags).
    """

    def __init__(self, store: DeviceStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._devices: dict[str, Device] = {}
        self.version = 0  # rises whenever a device is added, changed or removed
        self.refresh()

    def get(self, device_id: str) -> Device | None:
        """The enabled device with ``device_id``, or None."""
        return self._devices.get(device_id)

    def refresh(self) -> int:
        """Reload every enabled device; returns how many changed."""
        fresh = self.store.all(enabled_only=True)
        with self._lock:
            old = self._devices
            new: dict[str, Device] = {}
            changed = 0
            for d in fresh:
                prev = old.get(d.id)
                if prev is not None and prev == d:
                    new[d.id] = prev
                else:
                    new[d.id] = d
                    changed += 1
            changed += len(old.keys() - new.keys())
            self._devices = new
            if changed:
                self.version += 1
        return changed

    def invalidate(self, device_id: str) -> None:
        """Reload one device (after an API change)."""
        device = self.store.get(device_id)
        with self._lock:
            new = dict(self._devices)
            if device is None or not device.enabled:
                new.pop(device_id, None)
            elif new.get(device_id) != device:
                new[device_id] = device
            self._devices = new
            self.version += 1

    def __len__(self) -> int:
        return len(self._devices)

    def __iter__(self) -> Iterator[Device]:
        return iter(list(self._devices.values()))
