"""``seasonal``, ``changepoint`` and the anomaly likelihood: kernel = reference (both the
vectorised-per-rank and the compiled long-run paths), detection, files, saved state."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rules.filters as filters
import rules.likelihood as likelihood
from devices.model import Device
from devices.series import SeriesTable
from rules.engine import RuleEngine
from rules.errors import RuleFileError
from rules.kernels import local_ns
from rules.kinds import ChangepointRule, SeasonalRule, ZscoreRule
from rules.loader import parse_rules
from rules.model import Finding, Rule
from rules.reference import ReferenceEngine
from tests.unit.test_rules_equivalence import Cols, Row, canon, compare, streams, table_for

SEC = 1_000_000_000
T0 = 1_767_225_600 * SEC  # 2026-01-01 00:00 UTC
Stream = tuple[int, list[list[Row]], list[int | None]]


@contextmanager
def paths(long: int, chunk: int = filters.CUSUM_CHUNK, min_scores: int = likelihood.MIN_SCORES
          ) -> Iterator[None]:
    """Force the compiled long-run path (``long`` small) and short CUSUM chunks."""
    saved = filters.LONG, filters.CUSUM_CHUNK, likelihood.MIN_SCORES
    filters.LONG, filters.CUSUM_CHUNK, likelihood.MIN_SCORES = long, chunk, min_scores
    try:
        yield
    finally:
        filters.LONG, filters.CUSUM_CHUNK, likelihood.MIN_SCORES = saved


values = st.one_of(st.sampled_from([0.0, 1.0, 1.5, 2.0, 3.0, 50.0]), st.just(math.nan),
                   st.floats(-10, 100))
durations = st.sampled_from([0, 1, 3, 10])


@settings(max_examples=250, deadline=None)
@given(z=st.sampled_from([1.0, 2.0, 4.0]), halflife=st.sampled_from([1, 2, 5]),
       min_samples=st.integers(2, 4), direction=st.sampled_from(["both", "up", "down"]),
       min_std=st.sampled_from([0.0, 1.0]), slot=st.sampled_from([(1, 1), (2, 6), (5, 10)]),
       lk=st.sampled_from([None, 0.9, 0.99]), long=st.sampled_from([0, 1, 256]),
       for_s=durations, keep_s=durations,
       stream=streams(values, SEC, 60, max_rows=120, min_rows=20))
def test_seasonal_kernel_equals_reference(
        z: float, halflife: int, min_samples: int, direction: str, min_std: float,
        slot: tuple[int, int], lk: float | None, long: int, for_s: int, keep_s: int,
        stream: Stream) -> None:
    n, batches, ticks = stream
    rule = SeasonalRule(kind="seasonal", id="s", metric="lel", z=z, halflife=halflife,
                        min_samples=min_samples, direction=direction, min_std=min_std,
                        slot=slot[0], period=slot[1], likelihood=lk,
                        **{"for": for_s, "keep_firing_for": keep_s})
    with paths(long, min_scores=3):
        compare([rule], table_for(n), batches, ticks, tz="Europe/Berlin")


@settings(max_examples=250, deadline=None)
@given(drift=st.sampled_from([0.0, 0.5, 1.0]), h=st.sampled_from([0.5, 2.0, 5.0]),
       clip=st.sampled_from([1.0, 4.0, 1000.0]), halflife=st.sampled_from([1, 3, 20]),
       min_samples=st.integers(2, 5), direction=st.sampled_from(["both", "up", "down"]),
       noise=st.sampled_from(["residual", "diff"]), min_std=st.sampled_from([0.0, 1.0]),
       lk=st.sampled_from([None, 0.9]), long=st.sampled_from([0, 1, 256]),
       chunk=st.sampled_from([1, 3, 4096]), for_s=durations, keep_s=durations,
       stream=streams(values, SEC, 60, max_rows=120, min_rows=20))
def test_changepoint_kernel_equals_reference(
        drift: float, h: float, clip: float, halflife: int, min_samples: int, direction: str,
        noise: str, min_std: float, lk: float | None, long: int, chunk: int, for_s: int,
        keep_s: int, stream: Stream) -> None:
    n, batches, ticks = stream
    rule = ChangepointRule(kind="changepoint", id="c", metric="lel", drift=drift, threshold=h,
                           clip=clip, halflife=halflife, min_samples=min_samples,
                           direction=direction, noise=noise, min_std=min_std, likelihood=lk,
                           **{"for": for_s, "keep_firing_for": keep_s})
    with paths(long, chunk, min_scores=3):
        compare([rule], table_for(n), batches, ticks)


def one_series(values: list[float] | np.ndarray, step: int = 15 * 60 * SEC,
               start: int = T0) -> list[Row]:
    return [(0, start + i * step, float(v)) for i, v in enumerate(values)]


def run_both(rules: list[Rule], rows: list[Row], tz: str = "UTC", batch: int = 100_000
             ) -> list[tuple[Any, ...]]:
    """One long series through the engine in big batches and through the reference."""
    engine = RuleEngine(rules, table_for(1), timezone=tz)
    ref = ReferenceEngine(rules, table_for(1), timezone=tz)
    got: list[Finding] = []
    for i in range(0, len(rows), batch):
        got += engine.evaluate(Cols(rows[i:i + batch]))
    want = ref.evaluate(rows)
    assert canon(got) == canon(want)
    return canon(got)


def daily_flow(days: int, rng: np.random.Generator, step_min: int = 15) -> np.ndarray:
    per_day = 24 * 60 // step_min
    t = np.arange(days * per_day) / per_day
    return 50 + 30 * np.sin(2 * np.pi * (t - 0.3)) + rng.normal(0, 2, t.shape[0])


def test_seasonal_flags_an_off_cycle_value_not_the_cycle_across_dst() -> None:
    rng = np.random.default_rng(3)
    start = 1_773_446_400 * SEC - 3600 * SEC  # 2026-03-14 00:00 local (Europe/Berlin)
    ts = start + np.arange(40 * 96, dtype=np.int64) * 15 * 60 * SEC
    hour = (local_ns(ts, "Europe/Berlin") // SEC % 86400) / 86400  # switches on 03-29
    flow = 50 + 30 * np.sin(2 * np.pi * (hour - 0.3)) + rng.normal(0, 2, ts.shape[0])
    flow[35 * 96 + 12] += 40.0  # 03:00 local, a usually quiet hour
    rule = SeasonalRule(kind="seasonal", id="s", metric="lel", slot="15m")
    rows = [(0, int(t), float(v)) for t, v in zip(ts, flow, strict=True)]
    got = run_both([rule], rows, tz="Europe/Berlin", batch=5000)
    firing = [f for f in got if f[3] == "firing"]
    assert len(firing) == 1
    assert firing[0][5] == rows[35 * 96 + 12][1]
    # a plain z-score on the same cycle cannot tell the spike from the daily swing
    zs = run_both([ZscoreRule(kind="zscore", id="z", metric="lel", z=5.0)], rows)
    assert not any(f[5] == rows[35 * 96 + 12][1] for f in zs)


def test_seasonal_slot_needs_min_samples_before_judging() -> None:
    rule = SeasonalRule(kind="seasonal", id="s", metric="lel", slot="1h", min_samples=5)
    rows = one_series([10.0, 10.1] * 48 + [1000.0], step=3600 * SEC)  # 4 days: 4 per slot
    assert run_both([rule], rows) == []
    rows = one_series([10.0, 10.1] * 60 + [1000.0], step=3600 * SEC)  # the 6th of its slot
    assert [f[3] for f in run_both([rule], rows)] == ["firing"]


def test_changepoint_fires_at_a_leak_step_and_resolves_after_absorbing_it() -> None:
    rng = np.random.default_rng(5)
    night = rng.normal(10.0, 0.5, 3000)
    night[2000:] += 1.5  # a leak: +3 sigma
    rule = ChangepointRule(kind="changepoint", id="c", metric="lel", direction="up",
                           threshold=10)
    got = run_both([rule], one_series(night, step=60 * SEC))
    states = [(f[3], (f[5] - T0) // (60 * SEC)) for f in got]
    assert states[0][0] == "firing" and 2000 <= states[0][1] <= 2010
    # the sums keep alarming while the baseline absorbs the step, then stop
    assert states[1][0] == "resolved" and states[1][1] > states[0][1] + 200
    assert len(states) <= 6 and states[-1][0] == "resolved"


def test_changepoint_quiet_on_noise_and_sees_a_pressure_drop() -> None:
    rng = np.random.default_rng(6)
    pressure = rng.normal(0.35, 0.01, 20_000)
    rule = ChangepointRule(kind="changepoint", id="c", metric="lel", direction="down",
                           threshold=10)
    assert run_both([rule], one_series(pressure, step=60 * SEC)) == []
    pressure[15_000:] -= 0.02
    got = run_both([rule], one_series(pressure, step=60 * SEC))
    assert got and got[0][3] == "firing"
    assert 15_000 <= (got[0][5] - T0) // (60 * SEC) <= 15_010


def test_long_series_paths_agree_with_reference_on_many_alarms() -> None:
    rng = np.random.default_rng(9)
    x = np.cumsum(rng.normal(0, 1, 20_000))  # a random walk: alarms all along
    rules: list[Rule] = [
        ChangepointRule(kind="changepoint", id="c", metric="lel", keep_firing_for=0),
        ChangepointRule(kind="changepoint", id="cl", metric="lel", likelihood=0.999),
        SeasonalRule(kind="seasonal", id="s", metric="lel", slot="1h", likelihood=0.999),
        SeasonalRule(kind="seasonal", id="s7", metric="lel", period="7d", slot="15m"),
    ]
    got = run_both(rules, one_series(x, step=5 * 60 * SEC), tz="America/New_York",
                   batch=7000)
    assert sum(1 for f in got if f[0] == "c") > 20


def test_likelihood_one_setting_for_quiet_and_noisy_series() -> None:
    """The same relative excursion gives the same verdict at any noise level."""
    rng = np.random.default_rng(12)
    base = rng.normal(0, 1, 6000)
    rule = ChangepointRule(kind="changepoint", id="c", metric="lel", likelihood=0.9999,
                           direction="up")
    out = []
    for scale in (0.001, 1000.0):
        x = base * scale
        x[5000:5040] += 3 * scale
        out.append([(f[3], f[5]) for f in run_both([rule], one_series(x, step=SEC))])
    assert out[0] == out[1] and out[0] and out[0][0][0] == "firing"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('kind = "seasonal"\nslot = "7m"\n', "whole number"),
        ('kind = "seasonal"\nperiod = "30d"\nslot = "1d"\n', "at most 28 days"),
        ('kind = "seasonal"\nperiod = "7d"\nslot = "30s"\n', "at most 10080 slots"),
        ('kind = "seasonal"\nslot = 0\n', "must be > 0"),
        ('kind = "seasonal"\nz = 3\nclear = 4\n', "hysteresis"),
        ('kind = "seasonal"\nhalflife = "1h"\n', "field 'halflife'"),
        ('kind = "seasonal"\nmin_samples = 1\n', "field 'min_samples'"),
        ('kind = "seasonal"\nlikelihood = 1.0\n', "field 'likelihood'"),
        ('kind = "seasonal"\nperiod = "daily"\n', "field 'period'"),
        ('kind = "changepoint"\nthreshold = 0\n', "field 'threshold'"),
        ('kind = "changepoint"\ndrift = -1\n', "field 'drift'"),
        ('kind = "changepoint"\ndirection = "sideways"\n', "field 'direction'"),
        ('kind = "changepoint"\nnoise = "mad"\n', "field 'noise'"),
        ('kind = "changepoint"\nlikelihood = 0.2\n', "field 'likelihood'"),
        ('kind = "changepoint"\nclear_after = "1h"\n', "field 'clear_after'"),
    ],
)
def test_validation_errors(text: str, expected: str) -> None:
    with pytest.raises(RuleFileError) as info:
        parse_rules(f'[[rule]]\nid = "a"\nmetric = "flow"\n{text}', source="site.toml")
    assert str(info.value).startswith("site.toml: rule 'a'")
    assert expected in str(info.value)


def test_rule_files_parse_with_documented_defaults() -> None:
    text = ('[[rule]]\nid = "s"\nmetric = "flow"\nkind = "seasonal"\n'
            '[[rule]]\nid = "c"\nmetric = "flow"\nkind = "changepoint"\nlikelihood = 0.9999\n')
    s, c = parse_rules(text, source="x.toml")
    assert isinstance(s, SeasonalRule) and isinstance(c, ChangepointRule)
    assert (s.period, s.slot, s.z, s.halflife, s.min_samples, s.keep_firing_for_ns) == (
        86400 * SEC, 3600 * SEC, 5.0, 10, 5, 3600 * SEC)
    assert (c.drift, c.threshold, c.halflife, c.keep_firing_for_ns, c.likelihood) == (
        0.5, 10.0, 200, 3600 * SEC, 0.9999)


def test_saved_state_and_reload_continue_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    flow = daily_flow(12, rng)
    flow[10 * 96 + 40:10 * 96 + 44] += 30.0
    flow[11 * 96:] += 8.0
    rules: list[Rule] = [
        SeasonalRule(kind="seasonal", id="s", metric="lel", slot="1h", min_samples=3),
        ChangepointRule(kind="changepoint", id="c", metric="lel", halflife=50),
        SeasonalRule(kind="seasonal", id="sl", metric="lel", min_samples=3, likelihood=0.99),
    ]
    rows = one_series(flow)
    dev = Device("d0", "gas_alarm")

    def engine() -> tuple[RuleEngine, SeriesTable]:
        table = SeriesTable()
        table.id_for(dev, "lel")
        return RuleEngine(rules, table), table

    e1, _ = engine()
    whole = canon(e1.evaluate(Cols(rows)))
    assert {f[0] for f in whole} >= {"s", "c"}
    e2, _ = engine()
    half = canon(e2.evaluate(Cols(rows[:10 * 96])))
    assert e2.reload([*rules]) == (3, 0)  # unchanged definitions keep their state
    e2.save_state(tmp_path / "s.npz")
    e3, _ = engine()
    assert e3.restore_state(tmp_path / "s.npz", {"d0": dev}.get) == 1
    assert half + canon(e3.evaluate(Cols(rows[10 * 96:]))) == whole


@settings(max_examples=300, deadline=None)
@given(lens=st.lists(st.integers(1, 12), min_size=1, max_size=40), h=st.integers(1, 9),
       long=st.sampled_from([0, 3, 256]), chunk=st.sampled_from([1, 2, 4096]),
       halflife=st.sampled_from([1, 2, 7]), data=st.data())
def test_grouped_filters_equal_their_steps(lens: list[int], h: int, long: int, chunk: int,
                                           halflife: int, data: st.DataObject) -> None:
    """Many groups at once (the service's batches): both filters equal their one-step
    functions, on every path."""
    n = sum(lens)
    start = np.array([0, *np.cumsum(lens)[:-1]], dtype=np.int64)
    q = np.array(data.draw(st.lists(st.integers(-6, 6), min_size=2 * n, max_size=2 * n)),
                 dtype=np.int64).reshape(n, 2)
    s0 = np.array(data.draw(st.lists(st.integers(0, h - 1), min_size=2 * len(lens),
                                     max_size=2 * len(lens))), dtype=np.int64).reshape(-1, 2)
    x = np.array(data.draw(st.lists(st.floats(-1e6, 1e6), min_size=n, max_size=n)))
    n0 = np.array(data.draw(st.lists(st.integers(0, 20), min_size=len(lens),
                                     max_size=len(lens))), dtype=np.int64)
    y0 = np.array(data.draw(st.lists(st.floats(-1e6, 1e6), min_size=len(lens),
                                     max_size=len(lens))))
    a = filters.ewma_alpha(halflife)
    with paths(long, chunk):
        groups = filters.Groups.of(start, n)
        alarm, vals, fin = filters.grouped_cusum(q, groups, s0, h)
        nrow = n0[groups.gid] + groups.rank
        before, yfin = filters.grouped_ewma(x, groups, y0, nrow, a)
    for g, (b, ln) in enumerate(zip(start.tolist(), lens, strict=True)):
        y, cnt = float(y0[g]), int(n0[g])
        for r in range(b, b + ln):
            assert before[r] == y
            y = filters.ewma_step(a, y, cnt, float(x[r]))
            cnt += 1
        assert yfin[g] == y
        for c in range(2):
            s = int(s0[g, c])
            for r in range(b, b + ln):
                s, v, hit = filters.cusum_step(s, int(q[r, c]), h)
                assert (v, hit) == (vals[r, c], alarm[r, c])
            assert s == fin[g, c]


@settings(max_examples=150, deadline=None)
@given(robust=st.booleans(), halflife=st.sampled_from([1, 3, "5s"]),
       direction=st.sampled_from(["both", "up", "down"]), lk=st.sampled_from([0.9, 0.99]),
       keep_s=durations, stream=streams(values, SEC, 60, max_rows=100, min_rows=20))
def test_zscore_likelihood_kernel_equals_reference(
        robust: bool, halflife: int | str, direction: str, lk: float, keep_s: int,
        stream: Stream) -> None:
    n, batches, ticks = stream
    rule = ZscoreRule(kind="zscore", id="z", metric="lel", halflife=halflife, min_samples=2,
                      robust=robust, window=5, direction=direction, likelihood=lk,
                      keep_firing_for=keep_s)
    with paths(256, min_scores=3):
        compare([rule], table_for(n), batches, ticks)


def test_zscore_without_likelihood_keeps_its_fingerprint() -> None:
    """Adding the field must not reset the saved state of existing zscore rules."""
    plain = ZscoreRule(kind="zscore", id="z", metric="lel")
    assert "likelihood" not in plain.model_dump_json()
    assert '"likelihood":0.999' in ZscoreRule(kind="zscore", id="z", metric="lel",
                                              likelihood=0.999).model_dump_json()


def test_seasonal_step_reaching_slot_after_slot_stays_few_alerts() -> None:
    """A lasting +7.5 sigma step: the default keep_firing_for (1h) bridges the slots."""
    rng = np.random.default_rng(1)
    flow = daily_flow(30, rng)
    flow[25 * 96:] += 15.0
    got = run_both([SeasonalRule(kind="seasonal", id="s", metric="lel")], one_series(flow))
    firing = [f for f in got if f[3] == "firing"]
    assert 1 <= len(firing) <= 2
    assert firing[0][5] >= one_series(flow)[25 * 96][1]
    short = SeasonalRule(kind="seasonal", id="s", metric="lel", keep_firing_for="30m")
    assert len([f for f in run_both([short], one_series(flow)) if f[3] == "firing"]) > 2
