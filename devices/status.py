"""Online/offline and device-health tracking.

A device is online when it says so on its retained ``status`` topic or sends
anything; offline when its MQTT will (``offline``) arrives or it stays silent
longer than ``offline_after`` x its expected reporting interval.

The ingest path itself can fail (broker down, service restart, lost
subscription). Silence the service could not have heard is not device silence:

* while the service's own MQTT connection is down, no silence is counted;
* after every (re)connect or start, each device gets a full silence window
  again, and ``offline`` wills that arrive during the ``holdoff`` window (a
  broker that restarts publishes every client's will, and redelivers retained
  ones) only take effect if the device shows no sign of life before it ends;
* a will takes effect ``will_grace`` after it arrived, not at once: a broker
  that shuts down publishes every client's will to us just before our own
  connection drops, and those must not count;
* when a large part of the fleet that was heard from goes silent at once, that
  is taken as an ingest outage (logged) and the window restarts once; if the
  same silence outlasts that extra window, it is real (a district power cut)
  and the devices go offline.

The tracker is pure: the caller passes the time and persists its output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from devices.catalogue import Catalogue
from devices.events import LinkState, StatusUpdate
from devices.model import Device

log = logging.getLogger(__name__)

NS = 1_000_000_000
HYSTERESIS = {"battery": 0.1, "rssi": 3.0}
"""How far above its ``low`` limit battery / rssi must recover to clear the health flag."""


class LinkStatus(StrEnum):
    """What the service believes about a device's link."""

    UNKNOWN = "unknown"
    ONLINE = "online"
    OFFLINE = "offline"


class Change(StrEnum):
    """A status change worth recording."""

    ONLINE = "online"
    OFFLINE = "offline"
    BATTERY_LOW = "battery_low"
    BATTERY_OK = "battery_ok"
    WEAK_SIGNAL = "weak_signal"
    SIGNAL_OK = "signal_ok"


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A device's status changed at ``ts_ns`` (``reason``: status, will, silence, data, ...)."""

    device_id: str
    ts_ns: int
    change: Change
    reason: str = ""
    previous: LinkStatus | None = None  # link before an online/offline change


@dataclass(frozen=True, slots=True)
class DeviceState:
    """The current status and health of one device."""

    device_id: str
    link: LinkStatus = LinkStatus.UNKNOWN
    since_ns: int = 0
    last_seen_ns: int | None = None
    reason: str = ""
    battery_low: bool = False
    weak_signal: bool = False
    battery: float | None = None
    rssi: float | None = None
    firmware: str | None = None


@dataclass(slots=True)
class _Track:
    # ``state`` holds link, health flags and firmware; the fast-moving last_seen,
    # battery and rssi live here and are folded in by :meth:`view` (hot path: no
    # frozen-dataclass copy per reading).
    state: DeviceState
    last_seen_ns: int | None = None
    battery: float | None = None
    rssi: float | None = None
    pending_offline_ns: int | None = None

    def view(self) -> DeviceState:
        return replace(self.state, last_seen_ns=self.last_seen_ns, battery=self.battery,
                       rssi=self.rssi)


@dataclass(slots=True)
class TrackerOptions:
    """Tuning of the tracker (from the ``devices`` settings)."""

    holdoff_ns: int = 60 * NS
    will_grace_ns: int = 2 * NS
    mass_offline_fraction: float = 0.5
    mass_offline_min: int = 10


@dataclass(slots=True)
class _Ingest:
    connected: bool = False
    connects: int = 0
    ok_since_ns: int = 0
    outages: int = 0


class StatusTracker:
    """Tracks link status and health of the devices that ``devices()`` returns."""

    def __init__(self, catalogue: Catalogue, devices: Callable[[], Iterable[Device]],
                 lookup: Callable[[str], Device | None], *, now_ns: int,
                 options: TrackerOptions | None = None) -> None:
        self.catalogue = catalogue
        self._devices = devices
        self._lookup = lookup
        self.options = options or TrackerOptions()
        self._tracks: dict[str, _Track] = {}
        self._dirty: set[str] = set()  # link / health changed
        self._seen_dirty: set[str] = set()  # only last_seen / battery / rssi moved
        self._limits: dict[str, tuple[Device, float | None, float | None]] = {}
        self.ingest = _Ingest(ok_since_ns=now_ns)
        self.held_checks = 0
        self._mass_held = False

    # ------------------------------------------------------------------ state

    def load(self, states: Iterable[DeviceState]) -> None:
        """Start from persisted states (after a restart)."""
        for s in states:
            self._tracks[s.device_id] = _Track(s, s.last_seen_ns, s.battery, s.rssi)

    def state(self, device_id: str) -> DeviceState:
        """The current state of a device (UNKNOWN when never heard of)."""
        track = self._tracks.get(device_id)
        return track.view() if track else DeviceState(device_id)

    def states(self) -> list[DeviceState]:
        """Every tracked state."""
        return [t.view() for t in self._tracks.values()]

    def take_dirty(self, *, include_seen: bool = True) -> list[DeviceState]:
        """States changed since the last call (to persist); ``include_seen=False`` leaves
        states whose only change is ``last_seen`` for a later call."""
        ids = self._dirty | self._seen_dirty if include_seen else self._dirty
        dirty = [self._tracks[d].view() for d in ids if d in self._tracks]
        self._dirty.clear()
        if include_seen:
            self._seen_dirty.clear()
        else:
            self._seen_dirty -= ids
        return dirty

    def _track(self, device_id: str) -> _Track:
        track = self._tracks.get(device_id)
        if track is None:
            track = self._tracks[device_id] = _Track(DeviceState(device_id))
        return track

    def _set(self, track: _Track, **changes: object) -> None:
        track.state = replace(track.state, **changes)  # type: ignore[arg-type]
        self._dirty.add(track.state.device_id)

    # ------------------------------------------------------------------ ingest path

    def ingest_state(self, connected: bool, connects: int, now_ns: int) -> None:
        """Report the service's own MQTT connection; a (re)connect restarts the windows."""
        ing = self.ingest
        if connected and (not ing.connected or connects != ing.connects):
            if ing.connects:
                log.warning("ingest path reconnected (connect #%d): holding off offline "
                            "decisions for %.0fs", connects, self.options.holdoff_ns / NS)
            ing.ok_since_ns = now_ns
        elif not connected and ing.connected:
            ing.outages += 1
            log.warning("ingest path down: device silence is not counted until it is back")
        ing.connected = connected
        ing.connects = connects

    def _holding_off(self, now_ns: int) -> bool:
        return not self.ingest.connected or now_ns < self.ingest.ok_since_ns + \
            self.options.holdoff_ns

    # ------------------------------------------------------------------ inputs

    def seen(self, device_ids: Iterable[str], now_ns: int, reason: str = "data"
             ) -> list[StatusChange]:
        """Devices that sent something: they are online."""
        changes: list[StatusChange] = []
        tracks = self._tracks
        seen_dirty = self._seen_dirty
        for device_id in device_ids:
            track = tracks.get(device_id) or self._track(device_id)
            track.pending_offline_ns = None
            track.last_seen_ns = now_ns
            previous = track.state.link
            if previous is not LinkStatus.ONLINE:
                self._set(track, link=LinkStatus.ONLINE, since_ns=now_ns, reason=reason)
                changes.append(StatusChange(device_id, now_ns, Change.ONLINE, reason, previous))
            else:
                seen_dirty.add(device_id)
        return changes

    def status(self, updates: Iterable[StatusUpdate]) -> list[StatusChange]:
        """Apply ``status`` topic messages, in order."""
        changes: list[StatusChange] = []
        for u in updates:
            track = self._track(u.device_id)
            if u.firmware is not None and u.firmware != track.state.firmware:
                self._set(track, firmware=u.firmware)
            if u.rssi is not None:
                changes.extend(self._health(u.device_id, "rssi", u.rssi, u.ts_ns))
            if u.state is LinkState.ONLINE:
                changes.extend(self.seen([u.device_id], u.ts_ns, reason="status"))
            elif track.state.link is not LinkStatus.OFFLINE:
                # Possibly a will the broker published on its own shutdown, or a retained
                # one redelivered on our reconnect: :meth:`check` decides after the grace
                # (and after the hold-off, when our connection dropped meanwhile).
                track.pending_offline_ns = u.ts_ns
        return changes

    def health(self, readings: Iterable[tuple[str, str, float]], now_ns: int
               ) -> list[StatusChange]:
        """Battery and signal readings ``(device_id, metric, value)``."""
        changes: list[StatusChange] = []
        for device_id, metric, value in readings:
            changes.extend(self._health(device_id, metric, value, now_ns))
        return changes

    def _health(self, device_id: str, metric: str, value: float, now_ns: int
                ) -> list[StatusChange]:
        device = self._lookup(device_id)
        if device is None or metric not in HYSTERESIS:
            return []
        cached = self._limits.get(device_id)
        if cached is None or cached[0] is not device:  # new, or replaced by the registry
            cached = (device, self._limit(device, "battery", "low"),
                      self._limit(device, "rssi", "low"))
            self._limits[device_id] = cached
        track = self._tracks.get(device_id) or self._track(device_id)
        self._seen_dirty.add(device_id)
        if metric == "battery":
            track.battery = value
            low = cached[1]
            flag, on, off = track.state.battery_low, Change.BATTERY_LOW, Change.BATTERY_OK
        else:
            track.rssi = value
            low = cached[2]
            flag, on, off = track.state.weak_signal, Change.WEAK_SIGNAL, Change.SIGNAL_OK
        if low is None:
            return []
        if not flag and value < low:
            new = True
        elif flag and value >= low + HYSTERESIS[metric]:
            new = False
        else:
            return []
        key = "battery_low" if metric == "battery" else "weak_signal"
        self._set(track, **{key: new})
        change = on if new else off
        log.info("device health device=%s %s (%s=%s)", device_id, change.value, metric, value)
        return [StatusChange(device_id, now_ns, change, f"{metric}={value:g}")]

    def health_limit(self, device: Device, metric: str) -> float | None:
        """The ``low`` limit of a health metric for ``device`` (its override, else the type's)."""
        return self._limit(device, metric, "low")

    def health_flag(self, device_id: str, metric: str) -> bool:
        """Whether the battery-low / weak-signal flag of ``metric`` is set."""
        track = self._tracks.get(device_id)
        if track is None:
            return False
        return track.state.battery_low if metric == "battery" else track.state.weak_signal

    def record_values(self, values: Iterable[tuple[str, str, float]]) -> None:
        """Remember the latest battery / rssi values (no flag change; persisted lazily)."""
        for device_id, metric, value in values:
            track = self._tracks.get(device_id) or self._track(device_id)
            if metric == "battery":
                track.battery = value
            elif metric == "rssi":
                track.rssi = value
            self._seen_dirty.add(device_id)

    def _limit(self, device: Device, metric: str, name: str) -> float | None:
        override = device.limits.get(metric, {}).get(name)
        if override is not None:
            return override
        dtype = self.catalogue.types.get(device.type)
        spec = dtype.metrics.get(metric) if dtype else None
        return spec.limits.get(name) if spec else None

    def _offline(self, track: _Track, ts_ns: int, reason: str) -> list[StatusChange]:
        track.pending_offline_ns = None
        previous = track.state.link
        if previous is LinkStatus.OFFLINE:
            return []
        self._set(track, link=LinkStatus.OFFLINE, since_ns=ts_ns, reason=reason)
        log.info("device offline device=%s reason=%s", track.state.device_id, reason)
        return [StatusChange(track.state.device_id, ts_ns, Change.OFFLINE, reason, previous)]

    # ------------------------------------------------------------------ periodic check

    def silence_window_ns(self, device: Device) -> int:
        """How long ``device`` may be silent before it counts as offline."""
        dtype = self.catalogue.types.get(device.type)
        interval = device.interval_s or (dtype.health.interval_s if dtype else 3600.0)
        factor = dtype.health.offline_after if dtype else 3.0
        return int(interval * factor * NS)

    def check(self, now_ns: int) -> list[StatusChange]:
        """Deferred wills whose hold-off ended, and devices silent for too long."""
        if not self.ingest.connected:
            self.held_checks += 1
            return []
        changes: list[StatusChange] = []
        if not self._holding_off(now_ns):
            grace = self.options.will_grace_ns
            for track in self._tracks.values():
                pending = track.pending_offline_ns
                if pending is not None and now_ns >= pending + grace:
                    changes.extend(self._offline(track, pending, "will"))
        ok_since = self.ingest.ok_since_ns
        silent: list[tuple[_Track, int]] = []
        monitored = 0
        for device in self._devices():
            track = self._track(device.id)
            if track.last_seen_ns is not None:
                monitored += 1
            if track.state.link is LinkStatus.OFFLINE:
                continue
            last = max(track.last_seen_ns or 0, ok_since)
            window = self.silence_window_ns(device)
            if now_ns - last > window:
                silent.append((track, last + window))
        opts = self.options
        heard = sum(1 for track, _ in silent if track.last_seen_ns is not None)
        mass = heard >= max(opts.mass_offline_min, opts.mass_offline_fraction * monitored)
        if mass and not self._mass_held:
            log.warning("%d of %d devices silent at once: treating it as an ingest outage, "
                        "not marking them offline for another window", heard, monitored)
            self._mass_held = True
            self.ingest.ok_since_ns = now_ns
            self.ingest.outages += 1
            self.held_checks += 1
            return changes
        if mass:
            log.warning("%d devices still silent after the hold-off: marking them offline",
                        heard)
        self._mass_held = mass
        for track, at in silent:
            reason = "silence" if track.last_seen_ns else "never_seen"
            changes.extend(self._offline(track, at, reason))
        return changes

