"""The whole-series primitives of the kernels against plain loops: the affine scan and
the EWMA built on it, the robust window gathered from a batch, and that a long backfill
takes the whole-series path (its speed is measured by `lifeline bench rules`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.rules import batches, make_table
from rules.engine import RuleEngine
from rules.kernels import Segments, affine_scan, ewma_mean_var
from rules.kinds.zscore import ZscoreRule, robust_z
from rules.model import Rule
from rules.reference import ReferenceEngine

SEC = 1_000_000_000


@st.composite
def segmented(draw: st.DrawFn, values: st.SearchStrategy[float]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(series sorted, per-row coefficient in [0, 1], per-row value)."""
    lengths = draw(st.lists(st.integers(1, 40), min_size=1, max_size=12))  # >8: doubling
    series = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    n = series.shape[0]
    coef = st.sampled_from([0.0, 0.5, 1.0, 0.2063, 0.9, 1e-9])
    if draw(st.booleans()):  # one constant per segment: the compiled filter
        per = draw(st.lists(coef, min_size=len(lengths), max_size=len(lengths)))
        a = np.repeat(np.array(per), lengths)
    else:
        a = np.array(draw(st.lists(coef, min_size=n, max_size=n)))
    x = np.array(draw(st.lists(values, min_size=n, max_size=n)))
    return series, a, x


@settings(max_examples=100, deadline=None)
@given(data=segmented(st.one_of(st.just(0.0), st.floats(-100, 100))))
def test_affine_scan_equals_the_loop(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    series, a, b = data
    seg = Segments.of(series)
    got = affine_scan(a, b, seg)
    want = np.empty_like(b)
    for i in range(b.shape[0]):
        prev = 0.0 if seg.starts[i] else want[i - 1]
        want[i] = a[i] * prev + b[i]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.all(got[b == 0][np.cumsum(b != 0)[b == 0] == 0] == 0.0)  # zeros stay exact


def ewma_loop(x: np.ndarray, alpha: np.ndarray, series: np.ndarray, mean0: float,
              var0: float, count0: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's arithmetic (``zscore_step``), one reading at a time."""
    d_out, v_out = np.empty_like(x), np.empty_like(x)
    state: dict[int, tuple[float, float, int]] = {}
    for i, s in enumerate(series.tolist()):
        m, v, c = state.get(s, (mean0, var0, count0))
        d = float(x[i]) - m
        d_out[i], v_out[i] = d, v
        if c == 0:
            m, v = float(x[i]), 0.0
        else:
            incr = float(alpha[i]) * d
            m, v = m + incr, (1.0 - float(alpha[i])) * (v + d * incr)
        state[s] = (m, v, c + 1)
    return d_out, v_out


@settings(max_examples=100, deadline=None)
@given(data=segmented(st.one_of(st.sampled_from([0.0, 1.0, 1.5, 50.0]), st.floats(-10, 100))),
       fresh=st.booleans(), mean0=st.sampled_from([0.0, 1.5, 7.25]),
       var0=st.sampled_from([0.0, 2.0]))
def test_ewma_mean_var_equals_the_reference_step(
        data: tuple[np.ndarray, np.ndarray, np.ndarray], fresh: bool, mean0: float,
        var0: float) -> None:
    series, alpha, x = data
    alpha = np.where(alpha == 0.0, 0.5, alpha)
    if fresh:
        mean0 = var0 = 0.0
    seg = Segments.of(series)
    n = x.shape[0]
    _, d, var_before, _, _ = ewma_mean_var(x, alpha, seg, np.full(n, mean0), np.full(n, var0),
                                           np.full(n, fresh))
    want_d, want_v = ewma_loop(x, alpha, series, mean0, var0, 0 if fresh else 5)
    if fresh:  # a series' first reading is not judged: its deviation is moot
        d[seg.start_idx] = want_d[seg.start_idx]
    scale = 1.0 + float(np.abs(x).max()) + mean0
    np.testing.assert_allclose(d, want_d, rtol=1e-9, atol=1e-11 * scale)
    np.testing.assert_allclose(var_before, want_v, rtol=1e-9, atol=1e-11 * scale ** 2)


def test_constant_runs_stay_exact_in_a_long_ewma() -> None:
    x = np.concatenate([np.full(3000, 0.1), np.full(3000, 7.3)])
    series = np.zeros(x.shape[0], dtype=np.int64)
    seg = Segments.of(series)
    alpha = np.full(x.shape[0], 1.0 - 0.5 ** (1 / 3))
    _, d, var_before, _, _ = ewma_mean_var(x, alpha, seg, np.zeros(6000), np.zeros(6000),
                                           np.ones(6000, dtype=np.bool_))
    assert np.all(d[:3000] == 0.0) and np.all(var_before[:3001] == 0.0)
    assert d[3000] == 7.3 - 0.1


@settings(max_examples=100, deadline=None)
@given(w=st.integers(5, 12), data=st.data())
def test_robust_z_of_a_rolled_window_equals_the_ring_order(w: int, data: st.DataObject) -> None:
    cell = st.one_of(st.sampled_from([0.0, 1.0, 1.5]), st.floats(-10, 100))
    rows = data.draw(st.integers(1, 5))
    chron = np.array([data.draw(st.lists(cell, min_size=w, max_size=w)) for _ in range(rows)])
    roll = np.array([data.draw(st.integers(0, w - 1)) for _ in range(rows)], dtype=np.int64)
    ring = np.take_along_axis(chron, (np.arange(w) - roll[:, None]) % w, axis=1)
    x = np.array([data.draw(cell) for _ in range(rows)])
    rule = ZscoreRule(kind="zscore", id="z", metric="m", robust=True, window=w,
                      min_std=data.draw(st.sampled_from([0.0, 1.0])))
    got, want = robust_z(rule, chron, x, roll), robust_z(rule, ring, x)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[~np.isnan(got)], want[~np.isnan(want)])


def _one_series(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cols = batches(1, n, 1, seed=7, step_ns=60 * SEC * n)[0]
    value = cols.value.copy()
    value[n // 3: n // 3 + 3000] = 1.25  # flat stretches after a change: deviations
    value[n // 2: n // 2 + 3000] = 0.0  # shrink to rounding over a decaying variance
    ts = cols.ts_ns + np.random.default_rng(3).integers(0, SEC, n)  # jittered clock
    return cols.series, np.sort(ts), value


class _Cols:
    def __init__(self, series: np.ndarray, ts: np.ndarray, value: np.ndarray) -> None:
        self.series, self.ts_ns, self.value = series, ts, value


def test_long_zscore_backfill_gives_the_references_findings() -> None:
    series, ts, value = _one_series(12_000)
    rules: list[Rule] = [
        ZscoreRule(kind="zscore", id="z", metric="m", z=3.0, halflife=50, min_samples=30),
        ZscoreRule.model_validate({"kind": "zscore", "id": "zt", "metric": "m", "z": 3.0,
                                   "halflife": "20m", "keep_firing_for": "5m"}),
        ZscoreRule(kind="zscore", id="zs", metric="m", z=2.0, halflife=3, min_std=0.01),
        ZscoreRule(kind="zscore", id="zr", metric="m", z=4.0, robust=True, window=60),
        ZscoreRule.model_validate({"kind": "zscore", "id": "zr5", "metric": "m", "z": 3.0,
                                   "robust": True, "window": 5, "for": "2m"}),
    ]
    engine = RuleEngine(rules, make_table(1), timezone="UTC")
    ref = ReferenceEngine(rules, make_table(1), timezone="UTC")
    got = engine.evaluate(_Cols(series[:7000], ts[:7000], value[:7000]))
    got += engine.evaluate(_Cols(series[7000:], ts[7000:], value[7000:]))
    want = ref.evaluate(list(zip(series.tolist(), ts.tolist(), value.tolist(), strict=True)))
    assert len(want) > 20
    key = [(f.rule_id, f.state, f.ts_ns, f.value) for f in got]
    assert key == [(f.rule_id, f.state, f.ts_ns, f.value) for f in want]


def test_a_long_zscore_backfill_takes_no_step_per_reading(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No per-reading Python on a backfill: a batch holding a long run of one series goes
    through the whole-series path, never the step-per-rank loop (the speed itself is
    measured by `lifeline bench rules`, backfill per kind)."""
    import rules.kinds.zscore as zscore_module

    def no_loop(*args: object, **kwargs: object) -> None:
        raise AssertionError("the step-per-rank loop ran on a long run")

    monkeypatch.setattr(zscore_module, "zscore_loop", no_loop)
    series, ts, value = _one_series(20_000)
    for robust in (False, True):
        rule = ZscoreRule(kind="zscore", id="z", metric="m", z=3.0, robust=robust,
                          window=30, halflife=20, min_samples=30)
        engine = RuleEngine([rule], make_table(1), timezone="UTC")
        engine.evaluate(_Cols(series, ts, value))


def test_long_backfill_with_infinite_values_gives_the_references_findings() -> None:
    """An infinite reading in a long run: the EWMA falls back to the step-per-rank loop
    (a scan would spread inf/NaN into other series), the robust window copes."""
    series, ts, value = _one_series(3000)
    series = np.where(np.arange(3000) % 2 == 0, 0, 1)  # two interleaved series
    order = np.argsort(series, kind="stable")
    value[1500] = np.inf
    value[2001] = -np.inf
    rules: list[Rule] = [
        ZscoreRule(kind="zscore", id="z", metric="m", z=3.0, halflife=20, min_samples=30),
        ZscoreRule(kind="zscore", id="zr", metric="m", z=4.0, robust=True, window=30),
    ]
    engine = RuleEngine(rules, make_table(2), timezone="UTC")
    ref = ReferenceEngine(rules, make_table(2), timezone="UTC")
    s, t, v = series[order], ts[order], value[order]
    got = engine.evaluate(_Cols(s, t, v))
    want = ref.evaluate(list(zip(s.tolist(), t.tolist(), v.tolist(), strict=True)))
    assert len(want) > 4
    assert sorted((f.rule_id, f.device_id, f.state, f.ts_ns) for f in got) == sorted(
        (f.rule_id, f.device_id, f.state, f.ts_ns) for f in want)
