"""Rule engine throughput per kind against the one-reading-at-a-time reference.

Each kind runs on ``--series`` series (default 10,000) in batches of ``--batch``
readings (default 10,000), through ``RuleEngine.evaluate`` — the service's code
path — and the same readings through :class:`rules.reference.ReferenceEngine`
in the same run; reported as readings/s and the ratio. Signals are noisy
sines with rare excursions, so the transitions are few as in service. A second
part measures a backfill of every kind: one series of ``--backfill-readings``
readings fed as ``rules.backtest`` feeds a long series (``BATCH_ROWS`` per batch),
against the reference on the same series (target: ``BACKFILL_TARGET`` readings/s);
a third the peak memory of state for ``--memory-series`` series × 20 rules.
``multivariate`` reads whole devices: ``--batch`` readings are one message (8 metrics
at one time) from each of ``--batch / 8`` devices, after :data:`MV_WARMUP` warm-up
batches so every device has learned; its backfill is one device of 8 metrics.

Times are CPU time of this process (``time.process_time``), best of 3 for engine
and reference alike, measured alternately: the machine is shared, and wall time
would measure the neighbours. numpy runs single-threaded here.
"""

from __future__ import annotations

import argparse
import functools
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from devices.model import Device
from devices.series import SeriesTable
from rules.backtest import BATCH_ROWS
from rules.engine import RuleEngine
from rules.kinds import KINDS
from rules.model import Rule
from rules.reference import ReferenceEngine

SEC = 1_000_000_000

RULES: dict[str, dict[str, Any]] = {
    "threshold": {"above": 3.0, "clear": 2.5, "for": "10s"},
    "rate": {"max_rise": 5.0, "per": "1m"},
    "zscore": {"z": 5.0, "halflife": 50, "min_samples": 30},
    "zscore_robust": {"kind": "zscore", "robust": True, "window": 60, "z": 6.0},
    "flatline": {"window": "1h"},
    "stale": {"after": "10m"},
    "mnf": {"window": "02:00-04:00", "baseline_days": 7, "increase": 0.3},
    "seasonal": {"period": "1d", "slot": "1h"},
    "changepoint": {"drift": 0.5, "threshold": 5.0},
    "composite": {},
    "multivariate": {"metrics": [f"m{j}" for j in range(8)]},  # defaults: train 400
}
TARGETS = {"threshold": 5_000_000, "zscore": 1_000_000, "seasonal": 2_000_000,
           "changepoint": 2_000_000}
BACKFILL_TARGET = 1_000_000
MV_METRICS = 8
MV_TARGET = 200_000
MV_WARMUP = 410
"""Warm-up batches (one observation per device each) of ``multivariate``: past ``train``."""
"""``multivariate`` reads whole devices of ``MV_METRICS`` metrics; its target counts
every metric's reading."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this benchmark."""
    p.add_argument("--series", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--batches", type=int, default=30, help="timed batches per kind")
    p.add_argument("--warmup", type=int, default=70,
                   help="untimed batches first, so zscore/robust windows are full")
    p.add_argument("--reference-readings", type=int, default=30_000,
                   help="readings fed to the reference per kind")
    p.add_argument("--backfill-readings", type=int, default=150_000,
                   help="readings of the one series backfilled per kind")
    p.add_argument("--memory-series", type=int, default=100_000)
    p.add_argument("--kinds", default=",".join(RULES), help="comma-separated subset")


@dataclass
class _Cols:
    series: np.ndarray
    ts_ns: np.ndarray
    value: np.ndarray


def make_rules(name: str) -> list[Rule]:
    """The rule(s) measured for ``name``."""
    if name == "composite":
        a = KINDS["threshold"].parse({"id": "a", "metric": "m", "above": 3.0})
        b = KINDS["rate"].parse({"id": "b", "kind": "rate", "metric": "m", "max_rise": 5.0})
        c = KINDS["composite"].parse({"id": "c", "kind": "composite", "all": ["a", "b"],
                                      "scope": "grid"})
        return [a, b, c]
    params = dict(RULES[name])
    kind = params.pop("kind", name)
    if kind == "multivariate":
        return [KINDS[kind].parse({"id": name, "kind": kind, **params})]
    return [KINDS[kind].parse({"id": name, "kind": kind, "metric": "m", **params})]


def make_device_table(n_devices: int) -> SeriesTable:
    """``n_devices`` devices of ``MV_METRICS`` metrics each (series ``8 d + j``)."""
    table = SeriesTable()
    for d in range(n_devices):
        dev = Device(f"d{d}", "bench", grid=f"g{d % 100}")
        for j in range(MV_METRICS):
            table.id_for(dev, f"m{j}")
    return table


def device_batches(n_devices: int, count: int, seed: int = 1, step_ns: int = 60 * SEC,
                   per_batch: int | None = None) -> list[_Cols]:
    """Each batch: one message (8 correlated readings at one time) from every device, or
    ``per_batch`` observations of device 0 in time order (a backfill)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(2, MV_METRICS))
    clock = 1_767_225_600 * SEC
    out = []
    for b in range(count):
        if per_batch is None:
            obs, dev = n_devices, np.arange(n_devices, dtype=np.int64)
            t_obs = np.full(obs, clock + b * step_ns, dtype=np.int64)
        else:
            obs, dev = per_batch, np.zeros(per_batch, dtype=np.int64)
            t_obs = clock + (b * per_batch + np.arange(obs, dtype=np.int64)) * step_ns
        x = rng.normal(size=(obs, 2)) @ mix + rng.normal(0, 0.1, (obs, MV_METRICS)) + 10.0
        x[rng.random(obs) < 0.0005, 3] += 1.0  # rare in-range faults
        series = (dev[:, None] * MV_METRICS + np.arange(MV_METRICS)).reshape(-1)
        out.append(_Cols(series, np.repeat(t_obs, MV_METRICS), x.reshape(-1)))
    return out


def _rows(cols: _Cols) -> list[tuple[int, int, float]]:
    return list(zip(cols.series.tolist(), cols.ts_ns.tolist(), cols.value.tolist(),
                    strict=True))


def _compare_devices(rules: list[Rule], args: argparse.Namespace) -> tuple[float, float, int]:
    """:func:`_compare` over whole devices: ``--batch`` readings are one message from
    each of ``--batch / 8`` devices; the reference runs on 125 devices."""
    per = max(1, args.batch // MV_METRICS)
    warmup = max(args.warmup, MV_WARMUP)  # past learning: the model is what is measured
    data = device_batches(per, warmup + args.batches)
    warm, timed = data[:warmup], data[warmup:]
    limit = args.reference_readings
    ref_data = device_batches(125, warmup + limit // 1000 + 1, seed=5)
    ref = ReferenceEngine(rules, make_device_table(125), timezone="UTC")
    for cols in ref_data[:warmup]:
        ref.evaluate(_rows(cols))
    prepared = [_rows(cols) for cols in ref_data[warmup:]]
    return _alternate(lambda: RuleEngine(
        rules, make_device_table(max(per, args.series // MV_METRICS)), timezone="UTC"),
        warm, timed, ref, prepared, limit)


def _backfill_device(rules: list[Rule], readings: int, ref_readings: int) -> dict[str, Any]:
    """:func:`_backfill` for one device of 8 metrics (learning included)."""
    per = BATCH_ROWS // MV_METRICS
    data = device_batches(1, max(1, readings // (per * MV_METRICS)), seed=2, per_batch=per)
    total = sum(c.series.shape[0] for c in data)
    best = 0.0
    for _ in range(3):
        engine = RuleEngine(rules, make_device_table(1), timezone="UTC")
        t0 = time.process_time()
        for cols in data:
            engine.evaluate(cols)
        best = max(best, total / max(time.process_time() - t0, 1e-9))
    ref = ReferenceEngine(rules, make_device_table(1), timezone="UTC")
    rows = [r for cols in data for r in _rows(cols)][:ref_readings]
    t0 = time.process_time()
    ref.evaluate(rows)
    ref_rps = len(rows) / max(time.process_time() - t0, 1e-9)
    return {"readings": total, "batch": per * MV_METRICS, "engine_readings_per_s": round(best),
            "reference_readings_per_s": round(ref_rps),
            "speedup_vs_reference": round(best / ref_rps, 1),
            "target_readings_per_s": BACKFILL_TARGET, "meets_target": best >= BACKFILL_TARGET}


def _device_entry(rules: list[Rule], args: argparse.Namespace) -> dict[str, Any]:
    """The report of a kind that reads whole devices (``multivariate``)."""
    engine_rps, ref_rps, findings = _compare_devices(rules, args)
    return {
        "metrics_per_device": MV_METRICS,
        "engine_readings_per_s": round(engine_rps),
        "reference_readings_per_s": round(ref_rps),
        "speedup_vs_reference": round(engine_rps / ref_rps, 1),
        "findings_in_timed_batches": findings,
        "target_readings_per_s": MV_TARGET,
        "meets_target": bool(engine_rps >= MV_TARGET and engine_rps >= 20 * ref_rps),
        "backfill": _backfill_device(rules, args.backfill_readings, args.reference_readings),
    }


def make_table(n: int) -> SeriesTable:
    """``n`` series on devices spread over 100 grids."""
    table = SeriesTable()
    for i in range(n):
        table.id_for(Device(f"d{i}", "bench", grid=f"g{i % 100}"), "m")
    return table


def batches(n_series: int, size: int, count: int, seed: int = 1,
            step_ns: int = 60 * SEC) -> list[_Cols]:
    """Readings spread over all series; each batch covers ``step_ns`` of time."""
    rng = np.random.default_rng(seed)
    out = []
    clock = 1_767_225_600 * SEC  # 2026-01-01 UTC
    for b in range(count):
        series = rng.integers(0, n_series, size, dtype=np.int64)
        ts = clock + b * step_ns + np.arange(size, dtype=np.int64) * (step_ns // size)
        phase = (ts // SEC % 86400) / 86400 * 2 * np.pi
        value = 1.0 + 0.5 * np.sin(phase) + rng.normal(0, 0.05, size)
        value[rng.random(size) < 0.0005] += 5.0
        out.append(_Cols(series, ts, value))
    return out


def _step(name: str) -> int:
    return 30 * 60 * SEC if name == "mnf" else 60 * SEC


def _compare(rules: list[Rule], n: int, warm: list[_Cols], data: list[_Cols],
             ref_warm: list[_Cols], ref_data: list[_Cols], limit: int
             ) -> tuple[float, float, int]:
    """Engine and reference readings/s, best of 3 each, measured alternately (engine
    pass, reference slice, ...) so both see the same load on a shared machine.

    The engine runs every pass on a fresh, warmed-up engine; the reference runs on
    1,000 series (its cost per reading does not depend on the number of series, so
    the warm-up stays short) and continues through 3 consecutive slices.
    """
    ref = ReferenceEngine(rules, make_table(1000), timezone="UTC")

    def rows(cols: _Cols) -> list[tuple[int, int, float]]:
        return list(zip((cols.series % 1000).tolist(), cols.ts_ns.tolist(),
                        cols.value.tolist(), strict=True))

    for cols in ref_warm:
        ref.evaluate(rows(cols))
    prepared = [rows(cols) for cols in ref_data]
    return _alternate(lambda: RuleEngine(rules, make_table(n), timezone="UTC"),
                      warm, data, ref, prepared, limit)


def _alternate(new_engine: Callable[[], RuleEngine], warm: list[_Cols], timed: list[_Cols],
               ref: ReferenceEngine, prepared: list[list[tuple[int, int, float]]], limit: int
               ) -> tuple[float, float, int]:
    """Best of 3 engine passes (each on a fresh engine warmed with ``warm``) and best of 3
    consecutive reference slices of ``prepared`` (``limit`` readings in all), alternating
    so that both see the same load; returns (engine, reference) readings/s and findings."""
    third = max(1, len(prepared) // 3)
    best_engine = best_ref = 0.0
    findings = 0
    for part in range(3):
        engine = new_engine()
        for cols in warm:
            engine.evaluate(cols)
        findings = 0
        t0 = time.process_time()
        for cols in timed:
            findings += len(engine.evaluate(cols))
        elapsed = time.process_time() - t0
        best_engine = max(best_engine, sum(c.series.shape[0] for c in timed) / elapsed)
        done = 0
        t0 = time.process_time()
        for r in prepared[part * third:(part + 1) * third]:
            ref.evaluate(r)
            done += len(r)
            if done >= limit // 3:
                break
        best_ref = max(best_ref, done / (time.process_time() - t0))
    return best_engine, best_ref, findings


def _backfill(rules: list[Rule], readings: int, ref_readings: int, step_ns: int
              ) -> dict[str, Any]:
    """One series of ``readings`` (a device catching up, a backtest), in batches of
    ``rules.backtest.BATCH_ROWS`` as the backtest feeds it: engine readings/s (best of
    3, a fresh engine each) and the reference's on the first ``ref_readings`` of the
    same series."""
    one = batches(1, readings, 1, seed=2, step_ns=step_ns * readings)[0]
    best = 0.0
    for _ in range(3):
        engine = RuleEngine(rules, make_table(1), timezone="UTC")
        t0 = time.process_time()
        for start in range(0, readings, BATCH_ROWS):
            sl = slice(start, start + BATCH_ROWS)
            engine.evaluate(_Cols(one.series[sl], one.ts_ns[sl], one.value[sl]))
        best = max(best, readings / max(time.process_time() - t0, 1e-9))
    ref = ReferenceEngine(rules, make_table(1), timezone="UTC")
    n_ref = min(ref_readings, readings)
    rows = list(zip(one.series[:n_ref].tolist(), one.ts_ns[:n_ref].tolist(),
                    one.value[:n_ref].tolist(), strict=True))
    t0 = time.process_time()
    ref.evaluate(rows)
    ref_rps = n_ref / max(time.process_time() - t0, 1e-9)
    return {"readings": readings, "batch": BATCH_ROWS, "engine_readings_per_s": round(best),
            "reference_readings_per_s": round(ref_rps),
            "speedup_vs_reference": round(best / ref_rps, 1),
            "target_readings_per_s": BACKFILL_TARGET, "meets_target": best >= BACKFILL_TARGET}


def _memory(n_series: int) -> dict[str, Any]:
    kinds = ["threshold", "rate", "zscore", "zscore_robust", "flatline", "stale", "mnf"]
    rules: list[Rule] = []
    for i in range(20):
        rule = make_rules(kinds[i % len(kinds)])[0]
        rules.append(rule.model_copy(update={"id": f"r{i}"}))
    table = make_table(n_series)
    tracemalloc.start()
    engine = RuleEngine(rules, table, timezone="UTC")
    data = batches(n_series, 10_000, 6, seed=3)  # three for the memory, three timed below
    for cols in data[:3]:
        engine.evaluate(cols)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"series": n_series, "rules": len(rules), "state_mib": round(current / 2**20, 1),
            "peak_mib": round(peak / 2**20, 1), "snapshot": _snapshot(engine, data[3:])}


def _snapshot(engine: RuleEngine, fresh: list[_Cols]) -> dict[str, Any]:
    """What saving the rule state costs an active/standby leader (lifeline.service): the
    copy taken in the ingest thread, compared with evaluating one batch, and the
    serialising and compressing done by the saver thread."""
    batch_s = min(_timed(functools.partial(engine.evaluate, cols)) for cols in fresh)
    snap_s = min(_timed(engine.snapshot_state) for _ in range(3))
    snap = engine.snapshot_state()
    started = time.perf_counter()
    compressed = snap.to_bytes(compress=True)
    serialise_s = time.perf_counter() - started
    return {"copy_ms": round(snap_s * 1000, 1), "batch_ms": round(batch_s * 1000, 1),
            "copy_vs_batch": round(snap_s / batch_s, 2),
            "serialise_compress_ms": round(serialise_s * 1000, 1),
            "document_mib": round(len(snap.to_bytes()) / 2**20, 1),
            "compressed_mib": round(len(compressed) / 2**20, 2)}


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every selected kind; returns the JSON report."""
    kinds: dict[str, Any] = {}
    for name in args.kinds.split(","):
        rules = make_rules(name)
        if name == "multivariate":
            kinds[name] = _device_entry(rules, args)
            continue
        step = _step(name)
        data = batches(args.series, args.batch, args.warmup + args.batches, step_ns=step)
        warm, timed = data[: args.warmup], data[args.warmup:]
        ref_data = batches(1000, 1000, args.warmup + args.reference_readings // 1000 + 1,
                           seed=5, step_ns=step)
        engine_rps, ref_rps, findings = _compare(
            rules, args.series, warm, timed, ref_data[: args.warmup], ref_data[args.warmup:],
            args.reference_readings)
        entry: dict[str, Any] = {
            "engine_readings_per_s": round(engine_rps),
            "reference_readings_per_s": round(ref_rps),
            "speedup_vs_reference": round(engine_rps / ref_rps, 1),
            "findings_in_timed_batches": findings,
        }
        target = TARGETS.get(name)
        entry["target_readings_per_s"] = target
        entry["meets_target"] = (engine_rps >= target if target else True) and (
            engine_rps >= 20 * ref_rps)
        entry["backfill"] = _backfill(rules, args.backfill_readings, args.reference_readings,
                                      60 * SEC)  # minute data, also for mnf
        kinds[name] = entry
    return {
        "benchmark": "rules",
        "series": args.series,
        "batch": args.batch,
        "warmup_batches": args.warmup,
        "timed_batches": args.batches,
        "kinds": kinds,
        "all_meet_targets": all(k["meets_target"] for k in kinds.values()),
        "all_backfills_meet_target": all(k["backfill"]["meets_target"] for k in kinds.values()),
        "memory": _memory(args.memory_series),
    }
