"""``multivariate``: kernel = reference, the model's numbers, detection, validation, state."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from devices.model import Device
from devices.series import SeriesTable
from rules.engine import RuleEngine
from rules.kinds import KINDS, MultivariateRule
from rules.kinds.multivariate import score
from rules.loader import parse_rules
from rules.model import Finding, FindingState
from rules.reference import ReferenceEngine

MIN = 60 * 1_000_000_000
PUMP = ["flow", "pressure_in", "pressure_out", "current", "vibration", "temperature"]
Row = tuple[int, int, float]


class Cols:
    def __init__(self, rows: list[Row]) -> None:
        self.series = np.array([r[0] for r in rows], dtype=np.int64)
        self.ts_ns = np.array([r[1] for r in rows], dtype=np.int64)
        self.value = np.array([r[2] for r in rows], dtype=np.float64)


def rule_of(**kw: Any) -> MultivariateRule:
    entry = {"id": "mv", "kind": "multivariate", "metrics": PUMP, **kw}
    out = KINDS["multivariate"].parse(entry)
    assert isinstance(out, MultivariateRule)
    return out


def table_of(devices: int, metrics: list[str], other: bool = False) -> SeriesTable:
    table = SeriesTable()
    for d in range(devices):
        dev = Device(f"p{d}", "pump_station")
        for m in metrics:
            table.id_for(dev, m)
        if other:
            table.id_for(dev, "door")
    return table


def canon(findings: list[Finding]) -> list[tuple[Any, ...]]:
    return [(f.rule_id, f.device_id, f.metric, f.state.value, f.ts_ns, f.value, f.late)
            for f in findings]


def pump_data(rng: np.random.Generator, n: int, fault: tuple[int, int, int, float] | None
              ) -> np.ndarray:
    """Six sensors driven by two hidden states (speed, demand) plus noise: every sensor
    moves with the others; a fault shifts one sensor by a fraction of its range."""
    speed = 1.0 + 0.1 * np.sin(np.arange(n) / 20.0) + 0.03 * rng.normal(size=n)
    demand = 1.0 + 0.1 * np.cos(np.arange(n) / 35.0) + 0.03 * rng.normal(size=n)
    x = np.stack([
        50 * speed * demand,            # flow
        2.0 - 0.3 * demand,             # pressure_in
        2.0 + 3.0 * speed - 0.5 * demand,  # pressure_out
        30 * speed * speed,             # current
        1.0 + 0.5 * speed,              # vibration
        40 + 5 * speed,                 # temperature
    ], axis=1)
    x += rng.normal(size=x.shape) * x.std(axis=0) * 0.03
    if fault is not None:
        start, stop, metric, frac = fault
        x[start:stop, metric] += frac * x[:, metric].std()
    return x


def rows_of(x: np.ndarray, device: int, m: int, t0: int = 0) -> list[Row]:
    return [(device * m + j, (t0 + i + 1) * MIN, float(x[i, j]))
            for i in range(x.shape[0]) for j in range(m)]


# ---------------------------------------------------------------- equivalence


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, list[list[Row]]]:
    """Two or three devices of three metrics: gaps, missing metrics, repeats, splits,
    rows out of order and late."""
    n_dev = draw(st.integers(1, 3))
    m = 3
    rows: list[Row] = []
    for d in range(n_dev):
        t = 0
        for _ in range(draw(st.integers(5, 40))):
            t += draw(st.sampled_from([1, 1, 1, 2, 5, 20]))
            base = draw(st.sampled_from([0.0, 1.0, 5.0]))
            for j in range(m):
                if draw(st.integers(0, 9)) == 0:
                    continue  # a missing metric
                jitter = draw(st.sampled_from([0, 0, 0, 1]))
                v = draw(st.one_of(st.sampled_from([0.0, 1.0, 2.0]),
                                   st.floats(-5, 5, allow_nan=False)))
                rows.append((d * m + j, (t + jitter) * MIN, base * (j + 1) + v))
    order = draw(st.permutations(range(len(rows)))) if draw(st.booleans()) else None
    if order is not None:
        rows = [rows[i] for i in order]
    else:
        rows.sort(key=lambda r: (r[1], r[0]))
    cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=6)))
    batches, last = [], 0
    for c in [*cuts, len(rows)]:
        batches.append(rows[last:c])
        last = c
    return n_dev, batches


@settings(max_examples=150, deadline=None)
@given(streams(), st.sampled_from([16, 20, "30m"]), st.sampled_from([None, 1, 3]),
       st.sampled_from([0.6, 0.9, 0.999]), st.sampled_from(["3m", "10m"]),
       st.sampled_from([0, 2 * MIN]))
def test_kernel_equals_reference(stream: tuple[int, list[list[Row]]], train: int | str,
                                 components: int | None, quantile: float, max_gap: str,
                                 for_ns: int) -> None:
    n_dev, batches = stream
    metrics = ["a", "b", "c"]
    rule = KINDS["multivariate"].parse({
        "id": "mv", "kind": "multivariate", "metrics": metrics, "train": train,
        "components": components, "quantile": quantile, "max_gap": max_gap,
        "for": for_ns / 1e9})
    engine = RuleEngine([rule], table_of(n_dev, metrics), timezone="UTC")
    ref = ReferenceEngine([rule], table_of(n_dev, metrics), timezone="UTC")
    got, want = [], []
    for b in batches:
        got += engine.evaluate(Cols(b)) if b else []
        want += ref.evaluate(b)
    assert canon(got) == canon(want)


@pytest.mark.parametrize("likelihood", [None, 0.999])
def test_one_backfill_batch_equals_one_reading_at_a_time(likelihood: float | None) -> None:
    rng = np.random.default_rng(3)
    x = pump_data(rng, 900, (700, 760, 3, 1.5))
    rows = rows_of(x, 0, 6)
    rule = rule_of(train=100, likelihood=likelihood)
    engine = RuleEngine([rule], table_of(1, PUMP), timezone="UTC")
    ref = ReferenceEngine([rule], table_of(1, PUMP), timezone="UTC")
    got = engine.evaluate(Cols(rows))
    want = [f for r in rows for f in ref.evaluate([r])]
    assert canon(got) == canon(want)
    assert any(f.state is FindingState.FIRING for f in got)


# ---------------------------------------------------------------- the model


def test_scores_are_hotelling_t2_and_spe_of_the_training_pca() -> None:
    """Fitted on the first half of ``train``; limits: F/Box or the largest score of the
    second half, whichever is larger, times ``margin``."""
    from scipy import stats

    rng = np.random.default_rng(1)
    x = pump_data(rng, 600, None)
    rule = rule_of(train=400, components=2, shrinkage=0.0)
    engine = RuleEngine([rule], table_of(1, PUMP), timezone="UTC")
    engine.evaluate(Cols(rows_of(x[:401], 0, 6)))  # the 401st closes the 400th
    arrays = engine._slots[0].state.arrays
    assert arrays["trained"][0] and arrays["count"][0] == 400
    train = x[:200]
    mu, sd = train.mean(axis=0), train.std(axis=0, ddof=1)
    lam, vec = np.linalg.eigh(np.corrcoef(train, rowvar=False))
    lam, vec = lam[::-1], vec[:, ::-1]

    def stats_of(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = (obs - mu) / sd
        t = d @ vec
        return ((t[:, :2] ** 2 / lam[:2]).sum(axis=1),
                ((d - t[:, :2] @ vec[:, :2].T) ** 2).sum(axis=1))

    t2, spe = stats_of(x[401:])
    _, got_t2, got_spe = score(arrays, np.zeros(t2.shape[0], dtype=np.int64), x[401:])
    np.testing.assert_allclose(got_t2, t2, rtol=1e-7)
    np.testing.assert_allclose(got_spe, spe, rtol=1e-7, atol=1e-12)
    n, k = 200, 2
    cal_t2, cal_spe = stats_of(x[200:400])
    assert arrays["t2lim"][0] == pytest.approx(1.25 * max(
        k * (n * n - 1) / (n * (n - k)) * stats.f.ppf(0.999, k, n - k), cal_t2.max()))
    th1, th2 = lam[2:].sum(), (lam[2:] ** 2).sum()
    assert arrays["qlim"][0] == pytest.approx(1.25 * max(
        th2 / th1 * stats.chi2.ppf(0.999, th1 * th1 / th2), cal_spe.max()), rel=1e-6)


@pytest.mark.parametrize(("metric", "frac"), [(3, 1.0), (4, 1.0), (0, 0.8)])
def test_in_range_fault_fires_and_names_the_metric(metric: int, frac: float,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A sensor off the joint pattern, well inside its own range, fires (and only then)."""
    rng = np.random.default_rng(7 + metric)
    x = pump_data(rng, 1000, (800, 860, metric, frac))
    lo, hi = x[:800, metric].min(), x[:800, metric].max()
    assert lo < x[800:860, metric].min() and x[800:860, metric].max() < hi + 0.3 * (hi - lo)
    engine = RuleEngine([rule_of()], table_of(1, PUMP, other=True), timezone="UTC")
    with caplog.at_level(logging.INFO, logger="rules.kinds.multivariate"):
        out = engine.evaluate(Cols(rows_of(x, 0, 6)))
    firing = [f for f in out if f.state is FindingState.FIRING]
    assert all(f.metric == "flow" and f.value >= 1.0 for f in firing)
    inside = [f for f in firing if 801 * MIN <= f.ts_ns <= 861 * MIN]
    assert len(firing) - len(inside) <= 1  # at most one false episode in 400 normal
    assert inside and inside[0].ts_ns <= 805 * MIN
    assert PUMP[metric] in inside[0].detail.split(":")[-1].split(",")[0]
    assert inside[0].detail in caplog.text


def test_partial_observations_carry_within_max_gap() -> None:
    """Metrics at their own times combine within ``max_gap``; beyond it nothing learns."""
    rule = rule_of(metrics=["a", "b"], train=12, max_gap="2m")
    engine = RuleEngine([rule], table_of(1, ["a", "b"]), timezone="UTC")
    rows = []
    for i in range(10):  # a at odd minutes, b at even: each within 2 minutes
        rows.append((i % 2, (i + 1) * MIN, float(i % 3)))
    engine.evaluate(Cols(rows))
    arrays = engine._slots[0].state.arrays
    # 9 closed (minute 10 pending), the first without b: 8 complete, fitted at 6
    assert arrays["count"][0] == 8 and arrays["fitted"][0] and not arrays["trained"][0]
    far = RuleEngine([rule_of(metrics=["a", "b"], train=12, max_gap="30s")],
                     table_of(1, ["a", "b"]), timezone="UTC")
    far.evaluate(Cols(rows))
    assert far._slots[0].state.arrays["count"][0] == 0


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("extra", "message"), [
    ({"metrics": ["flow"]}, "at least 2"),
    ({"metrics": ["flow", "flow"]}, "twice"),
    ({"metric": "flow"}, "'metrics', not 'metric'"),
    ({"train": 27}, "at least 28"),
    ({"train": True}, "number of observations or a duration"),
    ({"train": "soon"}, "invalid duration"),
    ({"components": 7}, "at most the number of metrics"),
    ({"quantile": 1.0}, "less than 1"),
    ({"clear": 1.5}, "less than or equal to 1"),
    ({"max_gap": "-1m"}, "invalid duration"),
    ({"shrinkage": 2}, "less than or equal to 1"),
    ({"adapt": "1d"}, "Extra inputs"),
    ({"likelihood": 0.5}, "greater than 0.5"),
    ({"margin": 0.9}, "greater than or equal to 1"),
])
def test_validation_errors(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        rule_of(**extra)


def test_rule_file_from_the_docs_loads() -> None:
    rules = parse_rules("""
[[rule]]
id = "pump-joint"
kind = "multivariate"
device_types = ["pump_station"]
metrics = ["flow", "pressure_in", "pressure_out", "current", "vibration", "temperature"]
severity = "major"
""", source="pump.toml")
    rule = rules[0]
    assert isinstance(rule, MultivariateRule)
    assert (rule.train, rule.quantile, rule.max_gap_ns) == (400, 0.999, 10 * MIN)


# ---------------------------------------------------------------- state


def test_reload_and_restore_keep_the_trained_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    x = pump_data(rng, 700, (600, 640, 3, 1.5))
    rule = rule_of()
    table = table_of(1, PUMP)
    engine = RuleEngine([rule], table, timezone="UTC")
    assert not engine.evaluate(Cols(rows_of(x[:500], 0, 6)))
    engine.reload([rule_of()])  # unchanged: keeps the model
    assert engine._slots[0].state.arrays["trained"][0]
    path = tmp_path / "state.npz"
    engine.save_state(path)
    fresh_table = table_of(1, PUMP)
    restored = RuleEngine([rule_of()], fresh_table, timezone="UTC")
    by_id = {d.id: d for d in fresh_table.devices}
    assert restored.restore_state(path, by_id.get) == 6
    whole = RuleEngine([rule_of()], table_of(1, PUMP), timezone="UTC")
    want = whole.evaluate(Cols(rows_of(x, 0, 6)))
    got = restored.evaluate(Cols(rows_of(x[500:], 0, 6, t0=500)))
    assert canon(got) == canon(want)
    assert any(f.state is FindingState.FIRING for f in got)
    changed = RuleEngine([rule_of(quantile=0.99)], table_of(1, PUMP), timezone="UTC")
    changed.restore_state(path, by_id.get)
    changed.evaluate(Cols(rows_of(x[500:510], 0, 6, t0=500)))
    assert changed._slots[0].state.arrays["count"][0] == 9
    assert not changed._slots[0].state.arrays["trained"][0]  # a changed rule retrains


SKAB = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
        "Thermocouple", "Voltage", "Volume Flow RateRMS"]
SKAB_RULE = f"""
[[rule]]
id = "pump-joint"
kind = "multivariate"
description = "pump sensors off their joint pattern"
metrics = {SKAB!r}
severity = "major"
""".replace("'", '"')
SKAB_FAULT_NS = 1_583_748_700 * 1_000_000_000  # 2020-03-09 10:11:40 UTC


def write_skab_like(path: Path) -> None:
    """A SKAB-style recording: 1 s, 8 sensors, ';'-separated, label columns; from
    10:11:40 the motor current is 1.2 σ high while everything else is normal."""
    rng = np.random.default_rng(5)
    x = pump_data(rng, 1100, (700, 760, 3, 1.2))
    lines = ["datetime;" + ";".join(SKAB) + ";anomaly;changepoint"]
    for i in range(1100):
        vals = [x[i, 4], x[i, 4] * 0.9, x[i, 3], x[i, 2], x[i, 5], x[i, 5] + 1,
                230.0 + 0.01 * x[i, 0], x[i, 0]]
        lines.append(f"2020-03-09 10:{i // 60:02d}:{i % 60:02d};"
                     + ";".join(f"{v:.5f}" for v in vals) + f";{int(700 <= i < 760)};0")
    path.write_text("\n".join(lines) + "\n")


def test_backtest_of_a_pump_recording_finds_the_fault_with_default_rule(
        tmp_path: Path) -> None:
    """The rule file of the docs through ``rules.backtest``: the fault is found at its
    start and named by its sensor; the rest stays nearly quiet."""
    from rules.backtest import run_backtest

    csv = tmp_path / "pump1.csv"
    write_skab_like(csv)
    result = run_backtest(parse_rules(SKAB_RULE, source="skab.toml"), [csv], sep=";")
    firing = [f for f in result.findings if f.state is FindingState.FIRING]
    assert firing and firing[0].ts_ns == SKAB_FAULT_NS
    assert firing[0].detail.split(": ")[1].startswith("Current")
    assert len(firing) <= 3
