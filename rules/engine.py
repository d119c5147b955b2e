"""The rule engine: whole batches in, findings (transitions) out.

Order of readings: within a batch each series' readings are evaluated in time
order, whatever order they arrived in. A reading older than the last evaluated
reading of its series from an earlier batch is *late*: per-series rule state moves
forward in time only, so a late reading never changes it (it can neither rewind
``for``/EWMA/baseline state nor produce a transition dated before one already
sent). Kinds that judge late readings (``threshold`` and ``zscore`` rules without
``for``) judge it against its own time without writing their state
(:func:`rules.kernels.late_onsets`): an exceedance the live evaluation missed
becomes a *late* finding (``Finding.late``), an episode that is already over. Late
readings and duplicates (a time already seen) are counted (``RuleEngine.late``).

Every kind is reached through its :class:`~rules.kinds.base.RuleKind` in
:data:`rules.kinds.KINDS`: the engine knows no kind by name.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from devices.model import Device
from devices.series import SeriesTable
from rules import kernels as k
from rules.errors import RulesError
from rules.kinds import kind_of
from rules.kinds.base import Arr, Env, FindingTracker, RuleKind
from rules.model import Finding, FindingState, Readings, Rule, rule_fingerprint

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
STATE_VERSION = 1


def split_rows(series: I64, ts: I64, last_ts: I64) -> tuple[I64, I64]:
    """(rows to evaluate, late rows), each sorted by series and then time.

    Within a batch each series' rows are put in time order (a gateway's array may
    arrive in any order); of rows with equal (series, time) only the first to arrive
    counts. A row is evaluated if its time is after the series' last evaluated time
    from earlier batches (``last_ts``), late if it is before it; a row at that very
    time is a duplicate and neither.
    """
    n = series.shape[0]
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    order = k.stable_order(series)
    s, t = series[order], ts[order]
    starts = np.ones(n, dtype=np.bool_)
    starts[1:] = s[1:] != s[:-1]
    last = last_ts[s]
    if bool(np.all(starts[1:] | (t[1:] > t[:-1]))):  # already in time order
        keep, late = t > last, t < last
    else:
        order = np.lexsort((ts, series))  # stable: equal times keep arrival order
        s, t = series[order], ts[order]
        first = np.ones(n, dtype=np.bool_)  # first row of each (series, time)
        first[1:] = (s[1:] != s[:-1]) | (t[1:] != t[:-1])
        last = last_ts[s]
        keep, late = first & (t > last), first & (t < last)
    rows: I64 = order[keep]
    late_rows: I64 = order[late] if late.any() else np.empty(0, dtype=np.int64)
    return rows, late_rows


def in_order_rows(series: I64, ts: I64, last_ts: I64) -> I64:
    """The rows to evaluate of :func:`split_rows`."""
    return split_rows(series, ts, last_ts)[0]


@dataclass
class _Slot:
    """One loaded rule with its kind, state and per-series applicability / parameters."""

    rule: Rule
    kind: RuleKind[Any]
    fingerprint: str
    state: k.SeriesState
    env: Env
    applies: B = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))
    params: dict[str, Arr] = field(default_factory=dict)  # the env's, filled by _sync
    params_size: int = 0  # series the params cover
    tracker: FindingTracker | None = None

    def forget_params(self) -> None:
        """Per-series parameters are worked out again (devices may have changed)."""
        self.params.clear()
        self.params_size = 0


@dataclass(frozen=True, slots=True)
class RuleStateSnapshot:
    """Copied rule state (:meth:`RuleEngine.snapshot_state`): arrays and their meta."""

    arrays: dict[str, Any]
    meta: dict[str, Any]

    def to_bytes(self, compress: bool = False) -> bytes:
        """The ``.npz`` document :meth:`RuleEngine.load_state` reads; with ``compress``
        zlib-compressed (most rows of most rules are empty: ~100x smaller)."""
        arrays = dict(self.arrays)
        arrays["meta"] = np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8)
        out = io.BytesIO()
        np.savez(out, **arrays)
        document = out.getvalue()
        return zlib.compress(document, 1) if compress else document


class RuleEngine:
    """Evaluates rules on batches; keeps per-(series, rule) state in numpy arrays."""

    def __init__(self, rules: Sequence[Rule], series: SeriesTable, *,
                 timezone: str = "Asia/Shanghai") -> None:
        self.series = series
        self.timezone = timezone
        self.last_ts = np.zeros(0, dtype=np.int64)
        self.evaluated = 0
        self.late = 0
        self.reloads = 0
        self._lock = threading.RLock()
        self._match: dict[tuple[int, str, str], bool] = {}
        self._kind_of: I64 = np.zeros(0, dtype=np.int64)  # (type, metric) number per series
        self._kind_index: dict[tuple[str, str], int] = {}
        self._kinds: list[tuple[str, str]] = []
        self._slots: list[_Slot] = []
        self._dev_ref: list[Device] = list(series.devices)
        self._install(rules, {})

    @property
    def rules(self) -> list[Rule]:
        """The loaded rules, in file order."""
        return [slot.rule for slot in self._slots]

    def _install(self, rules: Sequence[Rule], old: dict[str, _Slot]) -> tuple[int, int]:
        ids = {r.id for r in rules}
        for rule in rules:
            field_name, refs = kind_of(rule).references(rule)
            for c in refs:
                if c not in ids or c == rule.id:
                    raise RulesError(f"rule {rule.id!r}: field {field_name!r}: "
                                     f"unknown rule {c!r}")
        slots, kept = [], 0
        for rule in rules:
            fp = rule_fingerprint(rule)
            slot = old.pop(fp, None)
            if slot is not None:
                kept += 1
                slot.forget_params()  # device limits are recomputed
                slot.applies = np.zeros(0, dtype=np.bool_)
            else:
                kind = kind_of(rule)
                state = k.SeriesState(kind.state_fields(rule))
                params: dict[str, Arr] = {}
                slot = _Slot(rule, kind, fp, state, Env(state, params, self.timezone,
                                                        self.series), params=params)
                slot.tracker = kind.tracker(rule)
            slots.append(slot)
        self._slots = slots
        self._forget_matches()
        return kept, len(slots) - kept

    def reload(self, rules: Sequence[Rule]) -> tuple[int, int]:
        """Replace the rules; unchanged rules keep their state. Returns (kept, new)."""
        with self._lock:
            old = {slot.fingerprint: slot for slot in self._slots}
            kept, new = self._install(rules, old)
            self.reloads += 1
        log.info("rules reloaded: %d kept with state, %d new or changed", kept, new)
        return kept, new

    def refresh_devices(self) -> None:
        """Recompute applicability and device limits (after the registry changed)."""
        with self._lock:
            for slot in self._slots:
                slot.applies = np.zeros(0, dtype=np.bool_)
                slot.forget_params()
            self._forget_matches()

    def _series_kinds(self, total: int) -> I64:
        """The (device type, metric) number of every series up to ``total``."""
        have = self._kind_of.shape[0]
        if have < total:
            index, kinds = self._kind_index, self._kinds
            devices, metrics = self.series.devices, self.series.metrics
            extra = np.empty(total - have, dtype=np.int64)
            for i, sid in enumerate(range(have, total)):
                key = (devices[sid].type, metrics[sid])
                number = index.get(key)
                if number is None:
                    number = index[key] = len(kinds)
                    kinds.append(key)
                extra[i] = number
            self._kind_of = np.concatenate([self._kind_of, extra])
        return self._kind_of

    def _forget_matches(self) -> None:
        """Rules or devices changed: applicability is worked out again."""
        self._match.clear()
        self._kind_of = np.zeros(0, dtype=np.int64)
        self._kind_index = {}
        self._kinds = []

    def _sync(self, index: int) -> _Slot:
        """Extend the slot's applicability and limits to series created since."""
        slot = self._slots[index]
        total = len(self.series)
        have = slot.applies.shape[0]
        if have < total:
            rule = slot.rule
            need = self._series_kinds(total)[have:total]
            # one match per (device type, metric), not per series
            table = np.zeros(len(self._kinds), dtype=np.bool_)
            for kind in np.unique(need).tolist():
                dtype, metric = self._kinds[kind]
                key = (index, dtype, metric)
                hit = self._match.get(key)
                if hit is None:
                    hit = slot.kind.applies(rule, dtype, metric)
                    self._match[key] = hit
                table[kind] = hit
            slot.applies = np.concatenate([slot.applies, table[need]])
        if slot.params_size < total:
            new = slot.kind.series_params(slot.rule, self.series.devices, self.series.metrics,
                                          slot.params_size, total)
            for name, arr in new.items():
                have_arr = slot.params.get(name)
                slot.params[name] = arr if have_arr is None else np.concatenate([have_arr, arr])
            slot.params_size = total
        slot.state.grow(total)
        return slot

    def evaluate(self, batch: Readings) -> list[Finding]:
        """Evaluate every rule on ``batch``; returns transitions in time order."""
        n = int(batch.series.shape[0])
        if n == 0:
            return []
        with self._lock:
            self._grow_last_ts(len(self.series))
            rows, late_rows = split_rows(batch.series, batch.ts_ns, self.last_ts)
            self.evaluated += n
            self.late += n - rows.shape[0]
            s, t, v = batch.series[rows], batch.ts_ns[rows], batch.value[rows]
            if s.shape[0]:
                seg_end = np.ones(s.shape[0], dtype=np.bool_)
                seg_end[:-1] = s[1:] != s[:-1]
                self.last_ts[s[seg_end]] = t[seg_end]
            number = ~np.isnan(v)
            all_numbers = bool(number.all())
            parts: list[tuple[int, I64, k.Transitions, bool]] = []
            for index in range(len(self._slots)):
                if self._slots[index].tracker is not None:
                    continue  # combines findings, reads no readings
                slot = self._sync(index)
                rule, kind = slot.rule, slot.kind
                if late_rows.shape[0] and kind.judges_late(rule):
                    late = self._late(index, slot, batch, late_rows)
                    if late is not None:
                        parts.append(late)
                if not s.shape[0]:
                    continue
                mask = slot.applies[s]
                if not kind.reads_nan and not all_numbers:
                    mask &= number
                if mask.all():
                    ms, mt, mv = s, t, v
                elif mask.any():
                    ms, mt, mv = s[mask], t[mask], v[mask]
                else:
                    continue
                with np.errstate(all="ignore"):  # huge z or rates are findings, not errors
                    tr = kind.kernel(rule, slot.env, ms, mt, mv)
                if tr.rows.shape[0]:
                    at = ms[tr.rows] if tr.series is None else tr.series
                    parts.append((index, at, tr, False))
            return self._findings(parts)

    def _late(self, index: int, slot: _Slot, batch: Readings, late_rows: I64
              ) -> tuple[int, I64, k.Transitions, bool] | None:
        """Late findings of one rule whose kind judges them (its state is only read)."""
        ls = batch.series[late_rows]
        mask = slot.applies[ls]
        if not slot.kind.reads_nan:
            mask &= ~np.isnan(batch.value[late_rows])
        if not mask.any():
            return None
        rows = late_rows[mask]
        s, t, v = batch.series[rows], batch.ts_ns[rows], batch.value[rows]
        with np.errstate(all="ignore"):
            tr = slot.kind.late(slot.rule, slot.env, s, t, v)
        if not tr.rows.shape[0]:
            return None
        return index, s[tr.rows], tr, True

    def _grow_last_ts(self, total: int) -> None:
        have = self.last_ts.shape[0]
        if have < total:
            grow = max(total, 2 * have) - have
            self.last_ts = np.concatenate(
                [self.last_ts, np.full(grow, np.iinfo(np.int64).min, np.int64)])

    def _devices_changed(self) -> None:
        """Series whose device the registry replaced get their applicability and limits
        recomputed (a device's own limits may have changed)."""
        devs = self.series.devices
        n = min(len(self._dev_ref), len(devs))
        changed = [i for i in range(n) if devs[i] is not self._dev_ref[i]]
        self._dev_ref = list(devs)
        if not changed:
            return
        self._forget_matches()
        for slot in self._slots:
            rule = slot.rule
            for sid in changed:
                dev, metric = devs[sid], self.series.metrics[sid]
                if sid < slot.applies.shape[0]:
                    slot.applies[sid] = slot.kind.applies(rule, dev.type, metric)
                if sid < slot.params_size and slot.params:
                    one = slot.kind.series_params(rule, devs, self.series.metrics, sid, sid + 1)
                    for name, arr in one.items():
                        slot.params[name][sid] = arr[0]
        log.info("device changes: rule applicability and limits refreshed for %d series",
                 len(changed))

    def tick(self, now_ns: int) -> list[Finding]:
        """Time-driven evaluation of the kinds that tick (``stale``: series silent since
        ``after`` fire).

        Also picks up devices the registry replaced (new limits, type, grid).
        """
        with self._lock:
            self._devices_changed()
            parts: list[tuple[int, I64, k.Transitions, bool]] = []
            for index, slot in enumerate(self._slots):
                if slot.kind.ticks:
                    self._sync(index)
                    tr = slot.kind.tick(slot.rule, slot.env, slot.applies, now_ns)
                    if tr.rows.shape[0]:
                        parts.append((index, tr.rows, tr, False))
            return self._findings(parts)

    def _findings(self, parts: list[tuple[int, I64, k.Transitions, bool]]) -> list[Finding]:
        if not parts:
            return []
        idx = np.concatenate([np.full(p[1].shape[0], p[0], np.int64) for p in parts])
        sid = np.concatenate([p[1] for p in parts])
        fire = np.concatenate([p[2].fire for p in parts])
        ts = np.concatenate([p[2].ts for p in parts])
        val = np.concatenate([p[2].value for p in parts])
        late = np.concatenate([np.full(p[1].shape[0], p[3], np.bool_) for p in parts])
        details: list[str] = []
        for p in parts:
            details += p[2].detail or [""] * p[1].shape[0]
        order = np.lexsort((~fire, sid, idx, ts))
        out: list[Finding] = []
        trackers = [slot.tracker for slot in self._slots if slot.tracker is not None]
        devices, metrics, slots = self.series.devices, self.series.metrics, self._slots
        firing, resolved = FindingState.FIRING, FindingState.RESOLVED
        for i, s_id, f_on, t_ns, value, f_late, pos in zip(
                idx[order].tolist(), sid[order].tolist(), fire[order].tolist(),
                ts[order].tolist(), val[order].tolist(), late[order].tolist(),
                order.tolist(), strict=True):
            rule = slots[i].rule
            dev = devices[s_id]
            f = Finding(rule.id, dev.id, metrics[s_id], firing if f_on else resolved,
                        rule.severity, t_ns, value, f_late, details[pos])
            out.append(f)
            for tracker in trackers:
                c = tracker.feed(f, dev)
                if c is not None:
                    out.append(c)
        return out

    # ------------------------------------------------------------ persistence

    def save_state(self, path: Path) -> None:
        """Write every rule's per-series state (keyed by device and metric) atomically."""
        data = self.dump_state()
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as fh:
            fh.write(data)
        tmp.replace(path)
        log.info("rule state saved to %s: %d series, %d rules", path, len(self.series),
                 len(self._slots))

    def dump_state(self) -> bytes:
        """Every rule's per-series state (keyed by device and metric) as one ``.npz``
        document (:meth:`save_state` writes it to a file)."""
        return self.snapshot_state().to_bytes()

    def snapshot_state(self) -> RuleStateSnapshot:
        """A copy of every rule's per-series state, to be serialised later (by another
        thread: :meth:`RuleStateSnapshot.to_bytes`) while the engine goes on."""
        with self._lock:
            keys = [[d.id, m] for d, m in zip(self.series.devices, self.series.metrics,
                                              strict=True)]
            self._grow_last_ts(len(keys))
            for index, slot in enumerate(self._slots):
                if slot.tracker is None:
                    self._sync(index)
            arrays: dict[str, Any] = {"last_ts": self.last_ts[: len(keys)].copy()}
            meta: dict[str, Any] = {"version": STATE_VERSION, "series": keys, "rules": []}
            for i, slot in enumerate(self._slots):
                entry: dict[str, Any] = {"fingerprint": slot.fingerprint, "id": slot.rule.id}
                if slot.tracker is not None:
                    entry["composite"] = slot.tracker.dump()
                meta["rules"].append(entry)
                for name, arr in slot.state.arrays.items():
                    arrays[f"r{i}.{name}"] = arr[: len(keys)].copy()
        return RuleStateSnapshot(arrays, meta)

    def restore_state(self, path: Path, lookup: Callable[[str], Device | None],
                      now_ns: int | None = None) -> int:
        """Load state written by :meth:`save_state` for rules that are unchanged.

        ``lookup`` finds devices by id (the registry); series of unknown devices are
        dropped. With ``now_ns`` (a service start), kinds adjust their restored state
        (:meth:`~rules.kinds.base.RuleKind.restored`; ``stale`` rules measure silence
        from then): the service's own downtime is not the devices' fault. Returns the
        number of series restored.
        """
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RulesError(f"{path}: cannot read rule state: {exc}") from exc
        restored = self.load_state(data, lookup, now_ns, source=str(path))
        log.info("rule state restored from %s: %d series", path, restored)
        return restored

    def load_state(self, document: bytes, lookup: Callable[[str], Device | None],
                   now_ns: int | None = None, *, source: str = "rule state") -> int:
        """Load a document of :meth:`dump_state` (see :meth:`restore_state`). Raises
        :class:`RulesError` when it cannot be read; returns the series restored."""
        try:
            if not document.startswith(b"PK"):  # RuleStateSnapshot.to_bytes(compress=True)
                document = zlib.decompress(document)
            with np.load(io.BytesIO(document), allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                if meta.get("version") != STATE_VERSION:
                    raise RulesError(f"{source}: unsupported state version "
                                     f"{meta.get('version')}")
                arrays = {name: data[name] for name in data.files if name != "meta"}
        except (OSError, ValueError, KeyError, EOFError, json.JSONDecodeError,
                zipfile.BadZipFile, zlib.error) as exc:
            raise RulesError(f"{source}: cannot read rule state: {exc}") from exc
        with self._lock:
            old_ids, new_ids = [], []
            for i, (device_id, metric) in enumerate(meta["series"]):
                dev = lookup(str(device_id))
                if dev is not None:
                    old_ids.append(i)
                    new_ids.append(self.series.id_for(dev, str(metric)))
            src = np.array(old_ids, dtype=np.int64)
            dst = np.array(new_ids, dtype=np.int64)
            total = len(self.series)
            self._grow_last_ts(total)
            self.last_ts[dst] = np.maximum(self.last_ts[dst], arrays["last_ts"][src])
            by_fp = {e["fingerprint"]: (i, e) for i, e in enumerate(meta["rules"])}
            for slot in self._slots:
                found = by_fp.get(slot.fingerprint)
                if found is None:
                    continue
                i, entry = found
                slot.state.grow(total)
                for name, arr in slot.state.arrays.items():
                    saved = arrays.get(f"r{i}.{name}")
                    if saved is not None and saved.shape[1:] == arr.shape[1:]:
                        arr[dst] = saved[src]
                if slot.tracker is not None and "composite" in entry:
                    slot.tracker.load(entry["composite"])
                if now_ns is not None:
                    slot.kind.restored(slot.rule, slot.state, dst, now_ns)
        return len(new_ids)

    def sync_firing(self, active: Sequence[tuple[str, str, str]],
                    lookup: Callable[[str], Device | None]) -> int:
        """Make each rule fire for exactly the series of the open alerts.

        ``active``: ``(rule id, device id, metric)`` of every pending or firing alert in
        the service database. After a crash the restored state can be older than the
        alerts (an alert firing that the state does not know would never resolve; one
        resolved meanwhile would never fire again). Composite rules are left alone.
        Returns the number of series changed.
        """
        want: dict[str, list[int]] = {}
        for rule_id, device_id, metric in active:
            dev = lookup(device_id)
            if dev is not None:
                want.setdefault(rule_id, []).append(self.series.id_for(dev, metric))
        changed = 0
        with self._lock:
            total = len(self.series)
            self._grow_last_ts(total)
            for index, slot in enumerate(self._slots):
                if slot.tracker is not None or "firing" not in slot.state.arrays:
                    continue
                self._sync(index)
                firing = slot.state["firing"]
                target = np.zeros(total, dtype=np.bool_)
                target[np.array(want.get(slot.rule.id, []), dtype=np.int64)] = True
                target &= slot.applies[:total]
                diff = np.flatnonzero(firing[:total] != target)
                firing[diff] = target[diff]
                if "raw_on" in slot.state.arrays:  # latched kinds: the raw condition too
                    slot.state["raw_on"][diff] = target[diff]
                changed += int(diff.shape[0])
        return changed

    def describe(self) -> list[dict[str, Any]]:
        """Each rule with the number of series it applies to and is firing for."""
        with self._lock:
            out = []
            for index, slot in enumerate(self._slots):
                if slot.tracker is None:
                    self._sync(index)
                firing = (int(slot.state["firing"].sum()) if "firing" in slot.state.arrays
                          else slot.tracker.firing_count() if slot.tracker else 0)
                out.append({"rule": slot.rule, "series": int(slot.applies.sum()),
                            "firing": firing})
            return out
