"""Threshold kernel: equal to the one-reading-at-a-time reference on arbitrary streams."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.model import Device
from devices.series import SeriesTable
from rules.engine import RuleEngine, in_order_rows
from rules.kinds import ThresholdRule
from rules.model import FindingState
from rules.reference import ReferenceEngine, threshold_reference

SEC = 1_000_000_000


def engine_for(rule: ThresholdRule, n_series: int) -> tuple[RuleEngine, SeriesTable]:
    table = SeriesTable()
    for i in range(n_series):
        table.id_for(Device(f"d{i}", "gas_alarm"), "lel")
    return RuleEngine([rule], table), table


class Cols:
    def __init__(self, rows: list[tuple[int, int, float]]) -> None:
        self.series = np.array([r[0] for r in rows], dtype=np.int64)
        self.ts_ns = np.array([r[1] for r in rows], dtype=np.int64)
        self.value = np.array([r[2] for r in rows], dtype=np.float64)


def run_engine(rule: ThresholdRule, n_series: int, batches: list[list[tuple[int, int, float]]]
               ) -> list[tuple[int, int, bool]]:
    engine, table = engine_for(rule, n_series)
    out = []
    for batch in batches:
        for f in engine.evaluate(Cols(batch)):
            sid = table.lookup(f.device_id, f.metric)
            assert sid is not None
            out.append((sid, f.ts_ns, f.state is FindingState.FIRING))
    return out


rules = st.builds(
    lambda up, limit, gap, for_s: ThresholdRule(
        id="r", metric="lel", **({"above": limit, "clear": limit - gap} if up
                                 else {"below": limit, "clear": limit + gap}),
        **{"for": for_s}),
    st.booleans(), st.sampled_from([0.0, 25.0, 50.0]), st.sampled_from([0.0, 2.5, 5.0]),
    st.sampled_from([0, 1, 3, 10]),
)
values = st.one_of(st.sampled_from([0.0, 20.0, 22.5, 25.0, 45.0, 47.5, 50.0, 55.0, math.nan]),
                   st.floats(-10, 100))


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, list[tuple[int, int, float]], list[int]]:
    n_series = draw(st.integers(1, 4))
    rows = draw(st.lists(st.tuples(st.integers(0, n_series - 1), st.integers(0, 40), values),
                         max_size=80))
    # mostly increasing time per series, with gaps, repeats and some out-of-order rows
    rows = [(s, t * SEC // 2, v) for s, t, v in rows]
    if draw(st.booleans()):
        rows.sort(key=lambda r: r[1])
    cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=5)))
    return n_series, rows, cuts


Row = tuple[int, int, float]


def split(rows: list[Row], cuts: list[int]) -> list[list[Row]]:
    bounds = [0, *cuts, len(rows)]
    return [rows[a:b] for a, b in itertools.pairwise(bounds)]


def canonical(findings: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
    return sorted(findings)


@settings(max_examples=400, deadline=None)
@given(rule=rules, stream=streams())
def test_engine_equals_reference(rule: ThresholdRule,
                                 stream: tuple[int, list[tuple[int, int, float]], list[int]]
                                 ) -> None:
    n_series, rows, cuts = stream
    engine, table = engine_for(rule, n_series)
    reference = ReferenceEngine([rule], table)
    for batch in split(rows, cuts):
        got = engine.evaluate(Cols(batch))
        want = reference.evaluate(batch)
        assert [(f.device_id, f.state, f.ts_ns, repr(f.value)) for f in got] == [
            (f.device_id, f.state, f.ts_ns, repr(f.value)) for f in want]
    # one reading per batch: the plain threshold reference in arrival order
    assert canonical(run_engine(rule, n_series, [[r] for r in rows])) == canonical(
        threshold_reference(rule, rows))


def test_oscillation_around_limit_fires_once_with_hysteresis() -> None:
    rule = ThresholdRule(id="lvl2", metric="lel", above=50.0, clear=45.0)
    rows = [(0, i * SEC, 50.0 + (1.5 if i % 2 else -1.5)) for i in range(1000)]
    got = run_engine(rule, 1, [rows[:333], rows[333:700], rows[700:]])
    assert got == [(0, 0 + 1 * SEC, True)]


def test_for_delays_firing_and_resets_when_condition_breaks() -> None:
    rule = ThresholdRule(id="r", metric="lel", above=25.0, **{"for": "10s"})
    rows = [(0, 0, 30.0), (0, 5 * SEC, 30.0), (0, 6 * SEC, 10.0), (0, 7 * SEC, 30.0),
            (0, 16 * SEC, 30.0), (0, 17 * SEC, 30.0), (0, 18 * SEC, 1.0)]
    assert run_engine(rule, 1, [rows]) == [(0, 17 * SEC, True), (0, 18 * SEC, False)]


def test_below_rule_fires_and_resolves_past_clear() -> None:
    rule = ThresholdRule(id="low", metric="lel", below=0.14, clear=0.16)
    rows = [(0, 0, 0.3), (0, SEC, 0.13), (0, 2 * SEC, 0.15), (0, 3 * SEC, 0.17)]
    assert run_engine(rule, 1, [rows]) == [(0, SEC, True), (0, 3 * SEC, False)]


def test_late_reading_does_not_rewind_state() -> None:
    rule = ThresholdRule(id="r", metric="lel", above=50.0)
    got = run_engine(rule, 1, [[(0, 10 * SEC, 60.0)], [(0, 5 * SEC, 0.0)], [(0, 11 * SEC, 55.0)]])
    assert got == [(0, 10 * SEC, True)]


def test_in_order_rows_keeps_first_of_equal_timestamps() -> None:
    series = np.array([0, 0, 1, 0], dtype=np.int64)
    ts = np.array([5, 5, 1, 7], dtype=np.int64)
    last = np.array([0, 3], dtype=np.int64)
    assert in_order_rows(series, ts, last).tolist() == [0, 3]


def test_in_order_rows_sorts_each_series_by_time_within_a_batch() -> None:
    series = np.array([0, 1, 0, 0, 1, 0], dtype=np.int64)
    ts = np.array([9, 4, 7, 8, 2, 7], dtype=np.int64)
    last = np.array([7, 0], dtype=np.int64)
    # series 0: 7 is not after the last evaluated time (7), 8 then 9; series 1: 2 then 4
    assert in_order_rows(series, ts, last).tolist() == [3, 0, 4, 1]


def test_a_gateway_array_out_of_order_is_evaluated_in_time_order() -> None:
    rule = ThresholdRule(id="r", metric="lel", above=50.0, clear=45.0)
    batch = [(0, 3 * SEC, 10.0), (0, 1 * SEC, 60.0), (0, 2 * SEC, 40.0)]
    assert run_engine(rule, 1, [batch]) == [(0, SEC, True), (0, 2 * SEC, False)]


def test_rule_applies_only_to_its_device_types_and_metric_glob() -> None:
    table = SeriesTable()
    gas = table.id_for(Device("g", "gas_alarm"), "lel")
    wp = table.id_for(Device("w", "water_pressure"), "lel")
    other = table.id_for(Device("g", "gas_alarm"), "battery")
    engine = RuleEngine([ThresholdRule(id="r", metric="l*", device_types=("gas_alarm",),
                                       above=1.0)], table)
    cols = Cols([(gas, SEC, 5.0), (wp, SEC, 5.0), (other, SEC, 5.0)])
    assert [(f.device_id, f.metric) for f in engine.evaluate(cols)] == [("g", "lel")]
