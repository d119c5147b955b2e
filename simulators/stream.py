"""A scenario as a stream of MQTT messages in simulated time, with its ground truth.

Values come from the signal models, incidents change them (or the messages:
drop-outs, duplicates, clock skew, malformed payloads), and every incident is
recorded as :class:`~simulators.scenario.Truth`. Deterministic for a seed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import orjson

from devices.topics import TopicKind
from simulators.city import CityLayout, SimDevice, generate_city
from simulators.errors import ScenarioError
from simulators.models import MODELS, DeviceParams, draw_params
from simulators.recorded import RecordedFleet, build_recording
from simulators.scenario import INCIDENT_KINDS, IncidentSpec, Scenario, Truth

ALARM_INTERVAL_S = 10.0  # a gas alarm in alarm mode reports this often
GAS_LEVELS = (25.0, 50.0)  # GB/T 50493-2019 level 1 / level 2
GAS_CLEAR = 20.0
MAIN_METRIC = {"lel": "gas_alarm", "pressure": "water_pressure", "level": "drain_level",
               "flow": "water_flow", "tilt": "manhole_cover", "turbidity": "water_quality",
               "supply_temp": "heat_pipe", "ch4_ppm": "gas_pipeline", "battery": "gas_alarm"}
DEFAULT_METRIC = {"stuck_sensor": "pressure", "drift": "pressure", "spike": "pressure",
                  "low_battery": "battery"}
# Device types that store readings while they cannot reach the broker and send them after
# it is back (store-and-forward): the network instruments with a data logger / RTU (pressure
# loggers, flow meters, quality stations, gas and heating network sensors), for which backfill
# is routine. Battery field sensors (household gas alarms, drain level, manhole covers) send
# only their current value: what they measure while the broker is down is lost at the device.
STORE_AND_FORWARD = frozenset({"water_pressure", "water_flow", "water_quality", "gas_pipeline",
                               "heat_pipe"})
RECONNECT_S = (1.0, 30.0)  # after an outage, a device is back after this many seconds
MALFORMED = (b"{not json", b'{"values": "lots"}', b"\xff\xfe\x00", b"[]",
             b'{"ts": "yesterday", "values": {"x": 1}}')


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One message to publish at simulated time ``send_s``."""

    device_id: str
    kind: TopicKind
    payload: bytes
    send_s: float
    readings: int = 0  # metric values carried (telemetry only)
    retain: bool = False
    malformed: bool = False
    forwarded: bool = False  # withheld during a broker outage, sent after it


@dataclass(slots=True)
class _TypeFleet:
    devices: list[SimDevice]
    params: DeviceParams
    index: dict[str, int]


@dataclass(slots=True)
class _Active:
    truth: Truth
    spec: IncidentSpec
    device_rows: dict[str, set[int]] = field(default_factory=dict)  # type -> fleet indices
    frozen: dict[str, float] = field(default_factory=dict)


class CityRun:
    """Generates a scenario's messages chunk by chunk, in simulated time."""

    def __init__(self, scenario: Scenario, *, start_s: float | None = None) -> None:
        head = scenario.scenario
        self.scenario = scenario
        fleet = scenario.fleet
        if start_s is None:
            start_s = head.start.timestamp() if head.start else time.time() - head.duration
        self.start_s = float(start_s)
        self.end_s = self.start_s + head.duration
        self._recorded: dict[str, RecordedFleet] = {}
        source_truth: list[Truth] = []
        if scenario.source is not None:  # a simulated source replaces the signal models
            recording = build_recording(scenario, self.start_s)
            self.layout: CityLayout = recording.layout
            self._recorded = {f.dtype: f for f in recording.fleets}
            source_truth = recording.truth
        else:
            self.layout = generate_city(
                districts=fleet.districts, grids=max(fleet.grids, fleet.districts),
                devices=fleet.devices, seed=head.seed,
                intervals={k: int(v) for k, v in fleet.intervals.items()},
            )
        self._rng = np.random.default_rng(head.seed)
        self._fleets: dict[str, _TypeFleet] = {}
        for dtype in [*MODELS, *self._recorded]:
            devs = self.layout.of_type(dtype)
            if devs and dtype not in self._fleets:
                self._fleets[dtype] = _TypeFleet(
                    devs, draw_params(dtype if dtype in MODELS else "water_flow", len(devs),
                                      self._rng),
                    {d.id: i for i, d in enumerate(devs)})
        self._seq: dict[str, int] = {}
        self._gas_level: dict[str, int] = {}
        self._active = [self._place(i, spec) for i, spec in enumerate(scenario.incident)]
        self.truth: list[Truth] = [a.truth for a in self._active] + source_truth
        self.outages: list[tuple[float, float]] = sorted(
            (a.truth.start_s, a.truth.end_s) for a in self._active
            if a.spec.kind == "broker_outage")
        # readings stored at devices during outages, messages forwarded after them, and
        # messages lost at devices that cannot store (never published)
        self.outage_stats = {"withheld_readings": 0, "forwarded_messages": 0,
                             "lost_at_device": 0}

    # ---- incident placement ---------------------------------------------------------------

    def _pick(self, rng: random.Random, dtype: str, spec: IncidentSpec) -> list[SimDevice]:
        fleet = self._fleets.get(dtype)
        if fleet is None:
            raise ScenarioError(f"incident {spec.kind}: the fleet has no {dtype} devices")
        if spec.device != "auto":
            dev = self.layout.by_id.get(spec.device)
            if dev is None:
                raise ScenarioError(f"incident {spec.kind}: no device {spec.device!r}")
            return [dev]
        if spec.devices == 1:
            return [fleet.devices[rng.randrange(len(fleet.devices))]]
        grids: dict[str, list[SimDevice]] = {}
        for d in fleet.devices:
            grids.setdefault(d.device.grid, []).append(d)
        best = max(sorted(grids), key=lambda g: (len(grids[g]) >= spec.devices, rng.random()))
        return grids[best][: spec.devices]

    def _pick_dma(self, rng: random.Random, spec: IncidentSpec, need_pressure: bool) -> str:
        if spec.dma != "auto":
            if spec.dma not in self.layout.dmas:
                raise ScenarioError(f"incident {spec.kind}: no DMA {spec.dma!r}")
            return spec.dma
        candidates = [
            dma for dma in sorted(self.layout.dmas)
            if any(d.inlet for d in self.layout.in_dma(dma, "water_flow"))
            and (not need_pressure or len(self.layout.in_dma(dma, "water_pressure")) >= 2)
        ]
        if not candidates:
            raise ScenarioError(f"incident {spec.kind}: no DMA with an inlet meter"
                                + (" and two pressure sensors" if need_pressure else ""))
        return candidates[rng.randrange(len(candidates))]

    def _place(self, index: int, spec: IncidentSpec) -> _Active:
        rng = random.Random(self.scenario.scenario.seed * 1009 + index)
        category, needed, expect = INCIDENT_KINDS[spec.kind]
        start = self.start_s + spec.at
        end = self.end_s if spec.duration is None else min(self.end_s, start + spec.duration)
        reference = start
        params: dict[str, float] = {}
        dma = ""
        if spec.kind in ("main_burst", "background_leak"):
            dma = self._pick_dma(rng, spec, need_pressure=spec.kind == "main_burst")
            devs = [d for d in self.layout.in_dma(dma, "water_flow") if d.inlet]
            if spec.kind == "main_burst":
                devs = self.layout.in_dma(dma, "water_pressure") + devs
        elif spec.kind == "broker_outage":
            devs = []  # no device is at fault; any case during it is a false one
        elif spec.kind == "rain":
            district = (self.layout.grids[rng.randrange(len(self.layout.grids))].district
                        if spec.grid == "auto" else spec.grid)
            devs = [d for d in self.layout.of_type("drain_level")
                    if district in (d.device.district, d.device.grid)]
        else:
            dtype = needed or MAIN_METRIC[spec.metric or DEFAULT_METRIC.get(spec.kind, "lel")]
            devs = self._pick(rng, dtype, spec)
        if not devs and spec.kind != "broker_outage":
            raise ScenarioError(f"incident {spec.kind}: no device to place it on")
        if spec.kind == "gas_leak":
            rate = spec.rate or 1.0  # %LEL per minute
            params["rate"] = rate
            reference = start + GAS_LEVELS[0] / rate * 60.0
        truth = Truth(
            id=f"{self.scenario.name}#{index + 1}-{spec.kind}",
            kind=spec.kind, category=category, devices=tuple(d.id for d in devs),
            grid=devs[0].device.grid if devs else "", dma=dma or (devs[0].dma if devs else ""),
            start_s=start, end_s=end,
            reference_s=reference,
            expect_case=expect if spec.expect_case is None else spec.expect_case,
            params=params,
        )
        active = _Active(truth, spec)
        for d in devs:
            active.device_rows.setdefault(d.type, set()).add(self._fleets[d.type].index[d.id])
        return active

    # ---- generation -------------------------------------------------------------------------

    def chunks(self, chunk_s: float = 60.0) -> Iterator[list[SimMessage]]:
        """Messages of each ``chunk_s`` of simulated time, sorted by send time."""
        t0 = self.start_s
        pending: list[SimMessage] = []  # held back (out-of-order faults) past their chunk
        while t0 < self.end_s:
            t1 = min(self.end_s, t0 + chunk_s)
            batch = pending + self._chunk(t0, t1)
            batch.sort(key=lambda m: m.send_s)
            pending = [m for m in batch if m.send_s >= t1]
            yield self._merge_forwarded([m for m in batch if m.send_s < t1])
            t0 = t1
        if pending:
            yield self._merge_forwarded(pending)

    def messages(self) -> Iterator[SimMessage]:
        """Every message of the scenario in send order."""
        for chunk in self.chunks():
            yield from chunk

    def _report_times(self, fleet: _TypeFleet, t0: float, t1: float
                      ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        intervals = np.array([d.interval_s for d in fleet.devices], dtype=np.float64)
        offset = self.start_s + fleet.params.phase_s * intervals
        k = np.ceil((t0 - offset) / intervals)
        rows: list[npt.NDArray[np.int64]] = []
        times: list[npt.NDArray[np.float64]] = []
        steps = math.ceil((t1 - t0) / float(intervals.min())) + 1
        for j in range(steps):
            t = offset + (k + j) * intervals
            sel = np.flatnonzero((t >= t0) & (t < t1))
            rows.append(sel.astype(np.int64))
            times.append(t[sel])
        return np.concatenate(rows), np.concatenate(times)

    def _chunk(self, t0: float, t1: float) -> list[SimMessage]:
        out: list[SimMessage] = []
        days = (t0 - self.start_s) / 86_400
        for dtype, fleet in self._fleets.items():
            recorded = self._recorded.get(dtype)
            if recorded is not None:
                rows, times, values = self._recorded_values(recorded, fleet, t0, t1, days)
                if rows.size == 0:
                    continue
                keep = np.ones(rows.shape[0], dtype=np.bool_)
                skew = np.zeros(rows.shape[0])
                for act in self._active:
                    self._apply(act, dtype, fleet, rows, times, values, keep, skew)
                out.extend(self._to_messages(dtype, fleet, rows, times, values, keep, skew))
                continue
            rows, times = self._report_times(fleet, t0, t1)
            rows, times = self._fast_reports(dtype, rows, times, t0, t1)
            if rows.size == 0:
                continue
            params = DeviceParams(base=fleet.params.base[rows], rssi=fleet.params.rssi[rows],
                                  battery0=fleet.params.battery0[rows],
                                  phase_s=fleet.params.phase_s[rows])
            values = MODELS[dtype](times, params, self._rng, days)
            keep = np.ones(rows.shape[0], dtype=np.bool_)
            skew = np.zeros(rows.shape[0])
            for act in self._active:
                self._apply(act, dtype, fleet, rows, times, values, keep, skew)
            out.extend(self._to_messages(dtype, fleet, rows, times, values, keep, skew))
        out.extend(self._status_messages(t0, t1))
        if self.outages:
            out = self._outage(out)
        out.sort(key=lambda m: m.send_s)
        return out

    def _recorded_values(self, recorded: RecordedFleet, fleet: _TypeFleet, t0: float,
                         t1: float, days: float
                         ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64],
                                    dict[str, npt.NDArray[np.float64]]]:
        """A simulated source's readings in ``[t0, t1)``: every device at every step."""
        times_all = self.start_s + recorded.offsets_s
        steps = np.flatnonzero((times_all >= t0) & (times_all < t1))
        n = len(recorded.devices)
        rows = np.repeat(np.arange(n, dtype=np.int64), steps.size)
        cols = np.tile(steps, n)
        values = {m: np.array(v[rows, cols], dtype=np.float64)
                  for m, v in recorded.values.items()}
        if recorded.dtype in MODELS:  # battery-powered loggers: battery and signal too
            params = DeviceParams(base=fleet.params.base[rows], rssi=fleet.params.rssi[rows],
                                  battery0=fleet.params.battery0[rows],
                                  phase_s=fleet.params.phase_s[rows])
            health = MODELS[recorded.dtype](times_all[cols], params, self._rng, days)
            values.update({k: health[k] for k in ("battery", "rssi") if k in health})
        return rows, times_all[cols], values

    def _outage(self, msgs: list[SimMessage]) -> list[SimMessage]:
        """Broker down: nothing gets through. Store-and-forward devices keep their readings
        and send them when they are back; the others' messages are lost at the device."""
        out: list[SimMessage] = []
        for m in msgs:
            window = next(((a, b) for a, b in self.outages if a <= m.send_s < b), None)
            if window is None:
                out.append(m)
                continue
            dev = self.layout.by_id.get(m.device_id)
            if (m.kind is TopicKind.TELEMETRY and not m.malformed and dev is not None
                    and dev.type in STORE_AND_FORWARD):
                back = window[1] + random.Random(f"{m.device_id}{window[1]}").uniform(
                    *RECONNECT_S)
                self.outage_stats["withheld_readings"] += m.readings
                out.append(replace(m, send_s=back, forwarded=True))
            else:
                self.outage_stats["lost_at_device"] += 1
        return out

    def _merge_forwarded(self, msgs: list[SimMessage]) -> list[SimMessage]:
        """A device's readings withheld during an outage go out as one JSON array."""
        if not any(m.forwarded for m in msgs):
            return msgs
        groups: dict[tuple[str, float], list[SimMessage]] = {}
        out: list[SimMessage] = []
        for m in msgs:
            if not m.forwarded:
                out.append(m)
                continue
            group = groups.setdefault((m.device_id, m.send_s), [])
            if not group:
                out.append(m)  # placeholder, replaced below
            group.append(m)
        merged: list[SimMessage] = []
        for m in out:
            if not m.forwarded:
                merged.append(m)
                continue
            group = groups[(m.device_id, m.send_s)]
            body = b"[" + b",".join(g.payload for g in group) + b"]"
            merged.append(replace(m, payload=body, readings=sum(g.readings for g in group)))
            self.outage_stats["forwarded_messages"] += 1
        return merged

    def _fast_reports(self, dtype: str, rows: npt.NDArray[np.int64],
                      times: npt.NDArray[np.float64], t0: float, t1: float
                      ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Gas alarms under a leak report every ALARM_INTERVAL_S, as real ones do."""
        if dtype != "gas_alarm":
            return rows, times
        extra_rows: list[int] = []
        extra_times: list[float] = []
        for act in self._active:
            if act.spec.kind not in ("gas_leak", "gas_rupture"):
                continue
            lo, hi = max(t0, act.truth.start_s), min(t1, act.truth.end_s)
            if lo >= hi:
                continue
            first = act.truth.start_s + math.ceil((lo - act.truth.start_s) / ALARM_INTERVAL_S) \
                * ALARM_INTERVAL_S
            for r in sorted(act.device_rows.get(dtype, ())):
                t = first
                while t < hi:
                    extra_rows.append(r)
                    extra_times.append(t)
                    t += ALARM_INTERVAL_S
        if not extra_rows:
            return rows, times
        return (np.concatenate([rows, np.array(extra_rows, dtype=np.int64)]),
                np.concatenate([times, np.array(extra_times)]))

    def _apply(self, act: _Active, dtype: str, fleet: _TypeFleet, rows: npt.NDArray[np.int64],
               times: npt.NDArray[np.float64], values: dict[str, npt.NDArray[np.float64]],
               keep: npt.NDArray[np.bool_], skew: npt.NDArray[np.float64]) -> None:
        targets = act.device_rows.get(dtype)
        if not targets:
            return
        tr, spec = act.truth, act.spec
        mask = np.isin(rows, np.fromiter(targets, dtype=np.int64)) & (times >= tr.start_s) & (
            times < tr.end_s)
        if not mask.any():
            return
        since = times[mask] - tr.start_s
        kind = spec.kind
        metric = spec.metric or DEFAULT_METRIC.get(kind, "")
        base = fleet.params.base[rows[mask]]
        if kind == "gas_leak":
            peak = spec.magnitude or 80.0
            values["lel"][mask] += np.minimum(peak, tr.params["rate"] * since / 60)
        elif kind == "gas_rupture":
            noise = self._rng.normal(0, 2, since.size)
            values["lel"][mask] = np.round((spec.magnitude or 90.0) + noise, 2)
        elif kind == "main_burst":
            ramp = np.minimum(1.0, since / 30.0)
            if dtype == "water_pressure":
                values["pressure"][mask] *= 1.0 - (spec.magnitude or 0.35) * ramp
            elif dtype == "water_flow":
                values["flow"][mask] += base * (spec.rate or 0.5) * ramp
        elif kind == "background_leak" and dtype == "water_flow":
            night = 0.3 * base
            values["flow"][mask] += night * (spec.rate or 0.05) * since / 86_400
        elif kind == "blocked_drain":
            values["level"][mask] += np.minimum(spec.magnitude or 3.0,
                                                (spec.rate or 0.2) * since / 3600)
        elif kind == "rain":
            span = max(tr.end_s - tr.start_s, 1.0)
            values["level"][mask] += (spec.magnitude or 0.8) * np.sin(np.pi * since / span)
        elif kind == "stuck_sensor" and metric in values:
            for i in np.flatnonzero(mask):
                key = str(rows[i])
                act.frozen.setdefault(key, float(values[metric][i]))
                values[metric][i] = act.frozen[key]
        elif kind == "drift" and metric in values:
            values[metric][mask] += (spec.rate or 0.01) * since / 3600
        elif kind == "spike" and metric in values:
            hit = self._rng.random(since.size) < (spec.rate or 0.05)
            col = values[metric]
            idx = np.flatnonzero(mask)[hit]
            col[idx] = col[idx] * (spec.magnitude or 3.0)
        elif kind == "low_battery":
            values["battery"][mask] = np.maximum(2.8, 3.6 - (spec.rate or 0.05) * since / 3600)
        elif kind in ("dropout", "offline"):
            keep[mask] = False
        elif kind == "clock_skew":
            skew[mask] = spec.magnitude if spec.magnitude is not None else -3600.0

    def _status_messages(self, t0: float, t1: float) -> list[SimMessage]:
        """Offline incidents: the will (``offline``, retained) at the start, then ``online``."""
        out = []
        for act in self._active:
            if act.spec.kind != "offline":
                continue
            for dev in act.truth.devices:
                if act.spec.will and t0 <= act.truth.start_s < t1:
                    out.append(SimMessage(dev, TopicKind.STATUS, b"offline", act.truth.start_s,
                                          retain=True))
                if act.truth.end_s < self.end_s and t0 <= act.truth.end_s < t1:
                    out.append(SimMessage(dev, TopicKind.STATUS, b"online", act.truth.end_s,
                                          retain=True))
        return out

    def _comms(self, device_id: str, t: float) -> tuple[bool, bool, float]:
        """(duplicate, malformed, delay) for a device's message sent at ``t``."""
        dup = bad = False
        delay = 0.0
        for act in self._active:
            tr = act.truth
            if device_id not in tr.devices or not tr.start_s <= t < tr.end_s:
                continue
            kind = act.spec.kind
            if kind == "duplicates":
                dup = True
            elif kind == "malformed":
                bad = bad or random.Random(f"{device_id}{t}").random() < (act.spec.rate or 0.2)
            elif kind == "out_of_order":
                # Held back by a store-and-forward gateway for up to ``magnitude`` seconds.
                hold = act.spec.magnitude or 600.0
                delay = hold * random.Random(f"{device_id}{t}").random()
        return dup, bad, delay

    def _to_messages(self, dtype: str, fleet: _TypeFleet, rows: npt.NDArray[np.int64],
                     times: npt.NDArray[np.float64], values: dict[str, npt.NDArray[np.float64]],
                     keep: npt.NDArray[np.bool_], skew: npt.NDArray[np.float64]
                     ) -> list[SimMessage]:
        out: list[SimMessage] = []
        names = list(values)
        columns = [values[n].tolist() for n in names]
        affected = {d for a in self._active for d in a.truth.devices}
        order = np.argsort(times, kind="stable")
        for i in order.tolist():
            if not keep[i]:
                continue
            dev = fleet.devices[int(rows[i])]
            t = float(times[i])
            seq = self._seq.get(dev.id, 0) + 1
            self._seq[dev.id] = seq
            reading = {n: col[i] for n, col in zip(names, columns, strict=True)}
            ts_ms = int((t + skew[i]) * 1000)
            payload = orjson.dumps({"ts": ts_ms, "seq": seq, "values": reading})
            dup = bad = False
            delay = 0.0
            if dev.id in affected:
                dup, bad, delay = self._comms(dev.id, t)
                if dtype == "gas_alarm":
                    out.extend(self._gas_events(dev.id, t, reading["lel"]))
            if bad:
                payload = MALFORMED[seq % len(MALFORMED)]
            msg = SimMessage(dev.id, TopicKind.TELEMETRY, payload, t + delay,
                             readings=0 if bad else len(reading), malformed=bad)
            out.append(msg)
            if dup:
                out.append(msg)
        return out

    def _gas_events(self, device_id: str, t: float, lel: float) -> list[SimMessage]:
        """A gas alarm's own alarm / alarm_clear events when it crosses its levels."""
        level = self._gas_level.get(device_id, 0)
        new = 2 if lel >= GAS_LEVELS[1] else 1 if lel >= GAS_LEVELS[0] else (
            0 if lel < GAS_CLEAR else level)
        if new == level:
            return []
        self._gas_level[device_id] = new
        doc: dict[str, object] = {"ts": int(t * 1000), "metric": "lel", "value": lel}
        if new > level:
            doc.update(type="alarm", level=new)
        else:
            doc.update(type="alarm_clear", level=new)
        return [SimMessage(device_id, TopicKind.EVENT, orjson.dumps(doc), t)]
