"""Every kind: the numpy engine produces exactly the reference's findings.

Arbitrary streams: random series counts, batch splits, gaps, repeats,
out-of-order rows, NaN, and ticks between batches.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from devices.model import Device
from devices.series import SeriesTable
from rules.engine import RuleEngine
from rules.kinds import (
    CompositeRule,
    FlatlineRule,
    MnfRule,
    RateRule,
    StaleRule,
    ThresholdRule,
    ZscoreRule,
)
from rules.model import Finding, Rule
from rules.reference import ReferenceEngine

SEC = 1_000_000_000
Row = tuple[int, int, float]


class Cols:
    def __init__(self, rows: list[Row]) -> None:
        self.series = np.array([r[0] for r in rows], dtype=np.int64)
        self.ts_ns = np.array([r[1] for r in rows], dtype=np.int64)
        self.value = np.array([r[2] for r in rows], dtype=np.float64)


def table_for(n: int, grids: list[str] | None = None,
              limits: dict[int, float] | None = None) -> SeriesTable:
    table = SeriesTable()
    for i in range(n):
        lim = {"lel": {"high": limits[i]}} if limits and i in limits else {}
        dev = Device(f"d{i}", "gas_alarm", grid=(grids[i] if grids else ""), limits=lim)
        table.id_for(dev, "lel")
    return table


def canon(findings: list[Finding]) -> list[tuple[Any, ...]]:
    return [(f.rule_id, f.device_id, f.metric, f.state.value, f.severity.value, f.ts_ns,
             "nan" if math.isnan(f.value) else f.value, f.late) for f in findings]


def compare(rules: list[Rule], table: SeriesTable, batches: list[list[Row]],
            ticks: list[int | None], tz: str = "Asia/Shanghai") -> list[tuple[Any, ...]]:
    engine = RuleEngine(rules, table, timezone=tz)
    ref = ReferenceEngine(rules, table, timezone=tz)
    got: list[Finding] = []
    want: list[Finding] = []
    for batch, tick in zip(batches, ticks, strict=True):
        got += engine.evaluate(Cols(batch))
        want += ref.evaluate(batch)
        if tick is not None:
            got += engine.tick(tick)
            want += ref.tick(tick)
    assert canon(got) == canon(want)
    event(f"transitions: {min(len(got), 3)}+")
    event(f"late findings: {min(sum(f.late for f in got), 2)}+")
    return canon(got)


@st.composite
def streams(draw: st.DrawFn, values: st.SearchStrategy[float], unit: int, span: int,
            max_rows: int = 80, min_rows: int = 5, max_series: int = 4, odds: int = 5
            ) -> tuple[int, list[list[Row]], list[int | None]]:
    """Interleaved series with gaps, repeats (gap 0) and out-of-order rows (each row with
    odds 2 in ``odds + 1``), half of them starting a batch (late: older than their
    series' last reading of an earlier batch); ``span`` unused units."""
    n_series = draw(st.integers(1, max_series))
    clock = [draw(st.integers(0, span // 4)) * unit for _ in range(n_series)]
    rows: list[Row] = []
    spec = st.tuples(st.integers(0, n_series - 1), st.sampled_from([0, 1, 1, 1, 2, 5, 20]),
                     values, st.integers(0, odds), st.sampled_from([1, 1, 2, 3, 10]))
    forced: list[int] = []
    for s, gap, v, late, back in draw(st.lists(spec, min_size=min_rows, max_size=max_rows)):
        if late <= 1:  # out of order: within its batch, or late (a batch starts here)
            if late == 1:
                forced.append(len(rows))
            rows.append((s, clock[s] - back * unit, v))
        else:
            clock[s] += gap * unit
            rows.append((s, clock[s], v))
    cuts = sorted({*forced, *draw(st.lists(st.integers(0, len(rows)), max_size=5))})
    bounds = [0, *cuts, len(rows)]
    batches = [rows[a:b] for a, b in itertools.pairwise(bounds)]
    end = max(clock)
    ticks: list[int | None] = [
        draw(st.one_of(st.none(), st.integers(0, end // unit + 25).map(lambda x: x * unit)))
        for _ in batches]
    return n_series, batches, ticks


def with_nan(base: list[float]) -> st.SearchStrategy[float]:
    common = st.sampled_from(base)
    return st.one_of(common, common, common, st.just(math.nan), st.floats(-10, 100))


durations = st.sampled_from([0, 1, 3, 10])


@settings(max_examples=250, deadline=None)
@given(up=st.booleans(), limit=st.sampled_from([25.0, 50.0]), gap=st.sampled_from([0.0, 5.0]),
       for_s=durations, keep_s=durations, own=st.dictionaries(st.integers(0, 3),
                                                              st.sampled_from([10.0, 30.0])),
       stream=streams(with_nan([0.0, 20.0, 25.0, 30.0, 45.0, 50.0, 55.0]), SEC // 2, 40))
def test_threshold_with_keep_firing_for_and_device_limits(
        up: bool, limit: float, gap: float, for_s: int, keep_s: int, own: dict[int, float],
        stream: tuple[int, list[list[Row]], list[int | None]]) -> None:
    n, batches, ticks = stream
    band = {"above": limit, "clear": limit - gap} if up else {"below": limit,
                                                              "clear": limit + gap}
    rule = ThresholdRule(id="t", metric="lel", limit="high", **band,
                         **{"for": for_s, "keep_firing_for": keep_s})
    compare([rule], table_for(n, limits=own), batches, ticks)


@settings(max_examples=250, deadline=None)
@given(rise=st.booleans(), limit=st.sampled_from([1.0, 10.0]), clear=st.sampled_from([0.0, 0.5]),
       window=st.sampled_from([2, 5, 30]), for_s=durations, keep_s=durations,
       spikes=st.booleans(), depth=st.integers(1, 3),
       min_span=st.sampled_from([None, 0, 2, 5, 30]),
       stream=streams(with_nan([0.0, 1.0, 5.0, 10.0, 30.0]), SEC, 30, min_rows=10,
                      max_rows=120))
def test_rate(rise: bool, limit: float, clear: float, window: int, for_s: int, keep_s: int,
              spikes: bool, depth: int, min_span: int | None,
              stream: tuple[int, list[list[Row]], list[int | None]]) -> None:
    n, batches, ticks = stream
    rule = RateRule(kind="rate", id="r", metric="lel", clear=clear * limit, per="1s",
                    window=window, spike_filter=spikes, spike_readings=depth,
                    min_span=min_span,
                    **({"max_rise": limit} if rise else {"max_drop": limit}),
                    **{"for": for_s, "keep_firing_for": keep_s})
    compare([rule], table_for(n), batches, ticks)


@settings(max_examples=250, deadline=None)
@given(robust=st.booleans(), z=st.sampled_from([1.0, 2.0, 4.0]),
       halflife=st.sampled_from([1, 3, 10, "5s", "1m"]), min_samples=st.integers(2, 6),
       direction=st.sampled_from(["both", "up", "down"]), min_std=st.sampled_from([0.0, 1.0]),
       window=st.sampled_from([5, 6]), for_s=durations, keep_s=durations,
       stream=streams(with_nan([0.0, 1.0, 1.5, 2.0, 50.0]), SEC, 60, max_rows=100,
                      min_rows=20))
def test_zscore(robust: bool, z: float, halflife: int | str, min_samples: int, direction: str,
                min_std: float, window: int, for_s: int, keep_s: int,
                stream: tuple[int, list[list[Row]], list[int | None]]) -> None:
    n, batches, ticks = stream
    rule = ZscoreRule(kind="zscore", id="z", metric="lel", z=z, halflife=halflife,
                      min_samples=min_samples, robust=robust, window=window, direction=direction,
                      min_std=min_std, **{"for": for_s, "keep_firing_for": keep_s})
    compare([rule], table_for(n), batches, ticks)


@settings(max_examples=250, deadline=None)
@given(tol=st.sampled_from([0.0, 0.5]), rel=st.sampled_from([0.0, 0.01]),
       window=st.sampled_from([1, 3, 10]), keep_s=durations,
       stream=streams(with_nan([0.0, 1.0, 1.2, 1.4, 100.0, 101.0]), SEC, 40, min_rows=10))
def test_flatline(tol: float, rel: float, window: int, keep_s: int,
                  stream: tuple[int, list[list[Row]], list[int | None]]) -> None:
    n, batches, ticks = stream
    rule = FlatlineRule(kind="flatline", id="f", metric="lel", tolerance=tol,
                        relative_tolerance=rel, window=window, keep_firing_for=keep_s)
    compare([rule], table_for(n), batches, ticks)


@settings(max_examples=250, deadline=None)
@given(after=st.sampled_from([1, 3, 10]),
       stream=streams(with_nan([0.0, 1.0]), SEC, 40))
def test_stale_with_ticks(after: int, stream: tuple[int, list[list[Row]], list[int | None]]
                          ) -> None:
    n, batches, ticks = stream
    compare([StaleRule(kind="stale", id="s", after=after)], table_for(n), batches, ticks)


@settings(max_examples=200, deadline=None)
@given(days=st.integers(2, 4), min_days=st.integers(1, 2), inc=st.sampled_from([0.1, 0.5]),
       min_inc=st.sampled_from([0.0, 2.0]), clear=st.sampled_from([None, 0.05]),
       window=st.sampled_from(["02:00-04:00", "00:00-06:00", "22:30-23:59"]),
       tz=st.sampled_from(["Asia/Shanghai", "Europe/Berlin", "UTC"]),
       stream=streams(with_nan([0.0, 1.0, 2.0, 5.0, 10.0]), 3_600 * SEC, 40, max_rows=300,
                      min_rows=100, max_series=2, odds=20))
def test_mnf(days: int, min_days: int, inc: float, min_inc: float, clear: float | None,
             window: str, tz: str, stream: tuple[int, list[list[Row]], list[int | None]]) -> None:
    n, batches, ticks = stream
    rule = MnfRule(kind="mnf", id="m", metric="lel", window=window, baseline_days=days,
                   min_days=min_days, increase=inc, min_increase=min_inc, clear=clear)
    # start 2026-03-25 (Europe/Berlin changes to summer time on the 29th)
    start = 1_774_396_800 * SEC
    shifted = [[(s, t + start, v) for s, t, v in b] for b in batches]
    compare([rule], table_for(n), shifted, [None if x is None else x + start for x in ticks], tz)


@settings(max_examples=200, deadline=None)
@given(all_=st.booleans(), scope=st.sampled_from(["device", "grid"]),
       within=st.sampled_from([1, 5, 20]), min_count=st.integers(1, 3),
       grids=st.lists(st.sampled_from(["", "g1", "g2"]), min_size=4, max_size=4),
       stream=streams(with_nan([0.0, 20.0, 30.0, 60.0]), SEC, 40))
def test_composite(all_: bool, scope: str, within: int, min_count: int, grids: list[str],
                   stream: tuple[int, list[list[Row]], list[int | None]]) -> None:
    n, batches, ticks = stream
    a = ThresholdRule(id="a", metric="lel", above=25.0, clear=20.0)
    b = ThresholdRule(id="b", metric="lel", above=50.0, **{"for": 2})
    c = CompositeRule(kind="composite", id="c", scope=scope, within=within,
                      **({"all": ("a", "b")} if all_ else {"any": ("a", "b"),
                                                             "min_count": min_count}))
    compare([a, b, c], table_for(n, grids=grids), batches, ticks)


@settings(max_examples=150, deadline=None)
@given(keep_s=durations, limit=st.sampled_from([10.0, 30.0]), robust=st.booleans(),
       stream=streams(with_nan([0.0, 1.0, 5.0, 20.0, 30.0, 60.0]), SEC, 40, max_rows=100,
                      min_rows=30))
def test_late_readings_judged_by_threshold_and_zscore(
        keep_s: int, limit: float, robust: bool,
        stream: tuple[int, list[list[Row]], list[int | None]]) -> None:
    """Rules without ``for``, so that late readings are judged; composites ignore them."""
    n, batches, ticks = stream
    rules: list[Rule] = [
        ThresholdRule(id="t", metric="lel", above=limit, clear=limit / 2,
                      keep_firing_for=keep_s),
        ThresholdRule(id="tb", metric="lel", below=1.0, clear=5.0, limit="high"),
        ZscoreRule(kind="zscore", id="z", metric="lel", z=1.5, min_samples=3, halflife="5s",
                   robust=robust, window=5, keep_firing_for=keep_s),
        CompositeRule(kind="composite", id="c", any=("t", "z"), min_count=2),
    ]
    got = compare(rules, table_for(n, limits={0: 3.0}), batches, ticks)
    assert not any(f[-1] and f[0] == "c" for f in got)


@settings(max_examples=100, deadline=None)
@given(stream=streams(with_nan([0.0, 1.0, 20.0, 30.0, 60.0]), SEC, 40))
def test_all_kinds_together(stream: tuple[int, list[list[Row]], list[int | None]]) -> None:
    n, batches, ticks = stream
    rules: list[Rule] = [
        ThresholdRule(id="t", metric="lel", above=25.0, clear=20.0),
        RateRule(kind="rate", id="r", metric="lel", max_rise=10.0, per="1s"),
        ZscoreRule(kind="zscore", id="z", metric="lel", z=2.0, min_samples=3, halflife=3),
        FlatlineRule(kind="flatline", id="f", metric="lel", window=3),
        StaleRule(kind="stale", id="s", after=5),
        CompositeRule(kind="composite", id="c", any=("t", "r", "z"), min_count=2),
    ]
    compare(rules, table_for(n, grids=["g1"] * 4), batches, ticks)


@settings(max_examples=100, deadline=None)
@given(stream=streams(with_nan([0.0, 1.0, 20.0, 30.0, 60.0]), SEC, 40, max_rows=120,
                      min_rows=20))
def test_backfill_in_one_batch_equals_one_reading_per_batch(
        stream: tuple[int, list[list[Row]], list[int | None]]) -> None:
    n, batches, _ = stream
    last: dict[int, int] = {}
    rows = []
    for s, t, v in (r for b in batches for r in b):  # per series in time order
        if t > last.get(s, -1):
            last[s] = t
            rows.append((s, t, v))
    rules: list[Rule] = [
        ThresholdRule(id="t", metric="lel", above=25.0, clear=20.0, **{"for": 2}),
        RateRule(kind="rate", id="r", metric="lel", max_drop=10.0, per="1s"),
        ZscoreRule(kind="zscore", id="z", metric="lel", z=2.0, min_samples=3, halflife="5s"),
        ZscoreRule(kind="zscore", id="zr", metric="lel", z=2.0, robust=True, window=5),
        FlatlineRule(kind="flatline", id="f", metric="lel", window=3),
        StaleRule(kind="stale", id="s", after=5),
        MnfRule(kind="mnf", id="m", metric="lel", window="00:00-00:01", baseline_days=2,
                min_days=1),
    ]
    one = RuleEngine(rules, table_for(n))
    each = RuleEngine(rules, table_for(n))
    got = canon(one.evaluate(Cols(rows)))
    want: list[tuple[Any, ...]] = []
    for r in rows:
        want += canon(each.evaluate(Cols([r])))
    # one batch is reported in time order; per-reading batches in arrival order
    assert sorted(got, key=lambda f: f[5]) == got
    assert sorted(got, key=repr) == sorted(want, key=repr)
    assert one.late == each.late == 0


@settings(max_examples=50, deadline=None)
@given(stream=streams(with_nan([0.0, 1.0, 20.0, 30.0, 60.0]), SEC, 40, min_rows=20))
def test_late_readings_never_change_rule_state(
        stream: tuple[int, list[list[Row]], list[int | None]]) -> None:
    """Every kind: an engine fed the late readings ends in the same state, with the same
    live findings, as one that never saw them."""
    n, batches, ticks = stream
    rules: list[Rule] = [
        ThresholdRule(id="t", metric="lel", above=25.0, clear=20.0),
        ThresholdRule(id="tf", metric="lel", above=25.0, **{"for": 2}),
        RateRule(kind="rate", id="r", metric="lel", max_rise=10.0, per="1s", min_span="2s"),
        ZscoreRule(kind="zscore", id="z", metric="lel", z=2.0, min_samples=3, halflife="5s"),
        ZscoreRule(kind="zscore", id="zr", metric="lel", z=2.0, robust=True, window=5),
        FlatlineRule(kind="flatline", id="f", metric="lel", window=3),
        StaleRule(kind="stale", id="s", after=5),
        MnfRule(kind="mnf", id="m", metric="lel", window="00:00-00:01", baseline_days=2,
                min_days=1),
        CompositeRule(kind="composite", id="c", any=("t", "z"), min_count=2),
    ]
    with_late, without = RuleEngine(rules, table_for(n)), RuleEngine(rules, table_for(n))
    last: dict[int, int] = {}
    got: list[Finding] = []
    want: list[Finding] = []
    for batch, tick in zip(batches, ticks, strict=True):
        on_time = [r for r in batch if r[0] not in last or r[1] > last[r[0]]]
        for s, t, _ in on_time:
            last[s] = max(last.get(s, t), t)
        got += with_late.evaluate(Cols(batch))
        want += without.evaluate(Cols(on_time))
        if tick is not None:
            got += with_late.tick(tick)
            want += without.tick(tick)
    assert canon([f for f in got if not f.late]) == canon(want)
    assert not any(f.late and f.rule_id not in ("t", "z", "zr") for f in got)
    for i, (a, b) in enumerate(zip(with_late._slots, without._slots, strict=True)):
        if a.tracker is not None:
            assert a.tracker.dump() == b.tracker.dump() if b.tracker else False
            continue
        with_late._sync(i)
        without._sync(i)
        for name, arr in a.state.arrays.items():
            if name not in ("late_on", "late_t"):
                assert np.array_equal(arr[:n], b.state[name][:n], equal_nan=True), (
                    a.rule.id, name)
