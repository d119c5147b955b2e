"""Device monitor: status, health and device-side events of each decoded batch.

Ties the pure :class:`devices.status.StatusTracker` to the registry store
(persisted state, status changes, events), the InfluxDB writer
(``lifeline_device_status``) and the alert stage (findings).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from sqlalchemy.exc import SQLAlchemyError

from devices.catalogue import Catalogue
from devices.series import SeriesTable
from devices.status import (
    HYSTERESIS,
    Change,
    DeviceState,
    StatusChange,
    StatusTracker,
    TrackerOptions,
)
from devices.store import CachedRegistry, DeviceStore
from ingest.batch import Batch
from ingest.decode import DecodeResult
from lifeline.settings import DevicesSettings
from rules.device_events import event_findings, status_findings
from rules.model import Finding
from tsdb.lineproto import FieldValue
from tsdb.schema import DEVICE_STATUS

log = logging.getLogger(__name__)

_HEALTH_CODES = {name: code for code, name in enumerate(sorted(HYSTERESIS), start=1)}


class DeviceMonitor:
    """Consumes decode results and periodic ticks; returns findings for the alert stage."""

    def __init__(self, store: DeviceStore, registry: CachedRegistry, catalogue: Catalogue,
                 series: SeriesTable, write_lines: Callable[[list[str]], None],
                 settings: DevicesSettings, *, now_ns: int) -> None:
        self.store = store
        self.registry = registry
        self.catalogue = catalogue
        self.series = series
        self._write_lines = write_lines
        self.settings = settings
        self.tracker = StatusTracker(
            catalogue, registry.__iter__, registry.get, now_ns=now_ns,
            options=TrackerOptions(
                holdoff_ns=settings.holdoff.ns,
                will_grace_ns=settings.will_grace.ns,
                mass_offline_fraction=settings.mass_offline_fraction,
                mass_offline_min=settings.mass_offline_min,
            ),
        )
        self.tracker.load(store.states().values())
        self._check_ns = settings.check_interval.ns
        self._refresh_ns = settings.refresh_interval.ns
        self._last_check = now_ns
        self._last_refresh = now_ns
        # per series id: health metric code (0: none), its low limit, hysteresis, the
        # device's current flag, and the latest value not yet handed to the tracker
        self._codes: npt.NDArray[np.int8] = np.zeros(0, dtype=np.int8)
        self._low: npt.NDArray[np.float64] = np.zeros(0)
        self._hyst: npt.NDArray[np.float64] = np.zeros(0)
        self._flag: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)
        self._value: npt.NDArray[np.float64] = np.zeros(0)
        self._limits_version = registry.version
        self.events_stored = 0
        self.changes_recorded = 0
        self.recent_findings: deque[Finding] = deque(maxlen=1000)  # for inspection

    def _health_arrays(self) -> npt.NDArray[np.int8]:
        """Extend the per-series health arrays to every series; refresh limits on change."""
        n = len(self.series)
        start = len(self._codes)
        if start < n:
            metrics = self.series.metrics[start:n]
            codes = np.array([_HEALTH_CODES.get(m, 0) for m in metrics], dtype=np.int8)
            low = np.full(n - start, np.nan)
            hyst = np.zeros(n - start)
            flag = np.zeros(n - start, dtype=np.bool_)
            for i in np.flatnonzero(codes):
                device, metric = self.series.devices[start + i], metrics[i]
                limit = self.tracker.health_limit(device, metric)
                low[i] = np.nan if limit is None else limit
                hyst[i] = HYSTERESIS[metric]
                flag[i] = self.tracker.health_flag(device.id, metric)
            self._codes = np.concatenate([self._codes, codes])
            self._low = np.concatenate([self._low, low])
            self._hyst = np.concatenate([self._hyst, hyst])
            self._flag = np.concatenate([self._flag, flag])
            self._value = np.concatenate([self._value, np.full(n - start, np.nan)])
        if self.registry.version != self._limits_version:  # a device's limits may have changed
            self._limits_version = self.registry.version
            for sid in np.flatnonzero(self._codes):
                old = self.series.devices[sid]
                device = self.registry.get(old.id) or old
                limit = self.tracker.health_limit(device, self.series.metrics[sid])
                self._low[sid] = np.nan if limit is None else limit
        return self._codes

    def _health(self, batch: Batch, now_ns: int) -> list[StatusChange]:
        """Battery / rssi of a batch: numpy finds the readings that cross a limit; only
        those go through the tracker. The latest values are handed over on flush."""
        codes = self._health_arrays()[batch.series]
        rows = np.flatnonzero(codes)
        if not len(rows):
            return []
        rev = rows[::-1]
        _, first = np.unique(batch.series[rev], return_index=True)
        last = rev[first]  # the last reading of each health series in the batch
        sids = batch.series[last]
        vals = batch.value[last]
        self._value[sids] = vals
        low, hyst, flag = self._low[sids], self._hyst[sids], self._flag[sids]
        with np.errstate(invalid="ignore"):
            cross = (~flag & (vals < low)) | (flag & (vals >= low + hyst))
        changes: list[StatusChange] = []
        for i in np.flatnonzero(cross):
            sid = int(sids[i])
            device_id, metric = self.series.devices[sid].id, self.series.metrics[sid]
            changes.extend(self.tracker.health([(device_id, metric, float(vals[i]))], now_ns))
            self._flag[sid] = self.tracker.health_flag(device_id, metric)
        return changes

    def _push_values(self) -> None:
        """Hand the latest battery / rssi values to the tracker (for the stored state)."""
        pending = np.flatnonzero(~np.isnan(self._value))
        self.tracker.record_values(
            (self.series.devices[sid].id, self.series.metrics[sid], float(self._value[sid]))
            for sid in pending)
        self._value[pending] = np.nan

    def process(self, result: DecodeResult, now_ns: int) -> list[Finding]:
        """Sign of life, health, status messages and events of one decoded batch."""
        changes: list[StatusChange] = []
        batch = result.batch
        ids: set[str] = {e.device_id for e in result.events}
        if len(batch):
            devices = self.series.devices
            ids.update(devices[s].id for s in np.unique(batch.series).tolist())
        if ids:
            changes.extend(self.tracker.seen(sorted(ids), now_ns))
        if len(batch):
            changes.extend(self._health(batch, now_ns))
        if result.statuses:
            changes.extend(self.tracker.status(result.statuses))
            for u in result.statuses:  # an rssi in a status message may flip the flag
                sid = self.series.lookup(u.device_id, "rssi")
                if u.rssi is not None and sid is not None and sid < len(self._flag):
                    self._flag[sid] = self.tracker.health_flag(u.device_id, "rssi")
        findings: list[Finding] = []
        if result.events:
            pairs = event_findings(result.events, self.registry, self.catalogue)
            try:
                self.events_stored += self.store.add_events(
                    (e, f.severity.value) for e, f in pairs)
            except SQLAlchemyError as exc:  # the findings still go to the alert layer
                log.error("cannot store %d device events: %s", len(pairs), exc)
            for e, f in pairs:
                log.info("device event device=%s type=%s level=%s severity=%s",
                         e.device_id, e.type.value, e.level, f.severity.value)
            findings.extend(f for _, f in pairs)
        findings.extend(self._record(changes))
        self.recent_findings.extend(findings)
        return findings

    def tick(self, connected: bool, connects: int, now_ns: int) -> list[Finding]:
        """Periodic: ingest-path state, silence check, state persistence, registry refresh."""
        self.tracker.ingest_state(connected, connects, now_ns)
        findings: list[Finding] = []
        if now_ns - self._last_check >= self._check_ns:
            self._last_check = now_ns
            findings = self._record(self.tracker.check(now_ns))
            self.recent_findings.extend(findings)
            self._save(self.tracker.take_dirty(include_seen=False))
        if now_ns - self._last_refresh >= self._refresh_ns:
            self._last_refresh = now_ns
            self.flush()  # last_seen of every active device, once per refresh interval
            try:
                changed = self.registry.refresh()
            except SQLAlchemyError as exc:
                log.error("cannot reload the device registry (keeping the cached one): %s",
                          exc)
                changed = 0
            if changed:
                log.info("device registry reloaded: %d devices changed", changed)
        return findings

    def flush(self) -> int:
        """Persist every changed device state (with the latest battery / rssi values)."""
        self._push_values()
        return self._save(self.tracker.take_dirty())

    def _save(self, states: list[DeviceState]) -> int:
        try:
            return self.store.save_states(states)
        except SQLAlchemyError as exc:
            log.error("cannot persist the status of %d devices: %s", len(states), exc)
            return 0

    def _record(self, changes: list[StatusChange]) -> list[Finding]:
        if not changes:
            return []
        try:
            self.changes_recorded += self.store.add_changes(changes)
        except SQLAlchemyError as exc:  # InfluxDB and the alert layer still get them
            log.error("cannot store %d device status changes: %s", len(changes), exc)
        self._write_lines([self._line(c) for c in changes])
        if not self.settings.offline_alerts:
            return []
        return status_findings(changes, self.registry, self.catalogue)

    def _line(self, c: StatusChange) -> str:
        device = self.registry.get(c.device_id)
        tags = {"device": c.device_id}
        if device is not None:
            tags.update(type=device.type, grid=device.grid, district=device.district,
                        unit=device.unit)
        state = self.tracker.state(c.device_id)
        fields: dict[str, FieldValue] = {
            "change": c.change.value, "state": state.link.value,
            "online": 1 if state.link.value == "online" else 0,
            "battery_low": 1 if state.battery_low else 0,
            "weak_signal": 1 if state.weak_signal else 0, "reason": c.reason}
        if c.change in (Change.ONLINE, Change.OFFLINE):
            log.info("device %s device=%s reason=%s", c.change.value, c.device_id, c.reason)
        return DEVICE_STATUS.line(tags, fields, c.ts_ns)
