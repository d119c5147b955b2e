"""Engine behaviour: built-in rules, anti-flap, late readings, reload, saved state."""

from __future__ import annotations

import datetime as dt
import fnmatch
from pathlib import Path

import numpy as np
import pytest

from devices.catalogue import Catalogue
from devices.model import Device
from devices.series import SeriesTable
from lifeline.settings import builtin_rules_dir
from rules.engine import RuleEngine
from rules.errors import RulesError
from rules.kinds import CompositeRule, MnfRule, RateRule, StaleRule, ThresholdRule, ZscoreRule
from rules.loader import load_rules, parse_rules
from rules.model import Finding, FindingState, Severity

SEC = 1_000_000_000
T0 = 1_767_225_600 * SEC  # 2026-01-01 00:00 UTC


class Cols:
    def __init__(self, rows: list[tuple[int, int, float]]) -> None:
        self.series = np.array([r[0] for r in rows], dtype=np.int64)
        self.ts_ns = np.array([r[1] for r in rows], dtype=np.int64)
        self.value = np.array([r[2] for r in rows], dtype=np.float64)


def brief(findings: list[Finding]) -> list[tuple[str, str, str, int, float]]:
    return [(f.rule_id, f.state.value, f.severity.value, (f.ts_ns - T0) // SEC, f.value)
            for f in findings]


def gas_engine(device: Device | None = None) -> tuple[RuleEngine, int]:
    table = SeriesTable()
    sid = table.id_for(device or Device("kitchen-1", "gas_alarm"), "lel")
    rules = [r for r in load_rules([builtin_rules_dir()]) if r.id.startswith("gas-lel")]
    return RuleEngine(rules, table), sid


def feed(engine: RuleEngine, sid: int, values: list[float], start: int = 0,
         step: int = SEC) -> list[Finding]:
    rows = [(sid, T0 + (start + i) * step, v) for i, v in enumerate(values)]
    return engine.evaluate(Cols(rows))


def test_builtin_gas_rules_fire_at_25_and_50_lel_and_resolve_with_hysteresis() -> None:
    engine, sid = gas_engine()
    got = feed(engine, sid, [0.0, 24.9, 25.0, 30.0, 50.0, 46.0, 44.9, 21.0, 19.9, 10.0])
    assert brief(got) == [
        ("gas-lel-level1", "firing", "major", 2, 25.0),
        ("gas-lel-level2", "firing", "critical", 4, 50.0),
        ("gas-lel-level2", "resolved", "critical", 6, 44.9),  # 46 is above clear 45
        ("gas-lel-level1", "resolved", "major", 8, 19.9),  # 21 is above clear 20
    ]


def test_gas_oscillating_around_level1_fires_once() -> None:
    engine, sid = gas_engine()
    values = [25.5 if i % 2 else 24.5 for i in range(1000)]
    got = feed(engine, sid, values[:500]) + feed(engine, sid, values[500:], start=500)
    assert brief(got) == [("gas-lel-level1", "firing", "major", 1, 25.5)]


def test_device_own_limit_wins_and_keeps_the_band() -> None:
    engine, sid = gas_engine(Device("lab-1", "gas_alarm", limits={"lel": {"high": 30.0}}))
    got = feed(engine, sid, [26.0, 30.0, 26.0, 24.9])
    assert brief(got) == [("gas-lel-level1", "firing", "major", 1, 30.0),
                          ("gas-lel-level1", "resolved", "major", 3, 24.9)]


def test_device_limit_change_is_picked_up_on_tick() -> None:
    table = SeriesTable()
    old = Device("lab-1", "gas_alarm")
    sid = table.id_for(old, "lel")
    rules = [r for r in load_rules([builtin_rules_dir()]) if r.id == "gas-lel-level1"]
    engine = RuleEngine(rules, table)
    assert feed(engine, sid, [10.0]) == []
    table.id_for(Device("lab-1", "gas_alarm", limits={"lel": {"high": 12.0}}), "lel")
    engine.tick(T0)
    assert brief(feed(engine, sid, [12.5], start=1)) == [
        ("gas-lel-level1", "firing", "major", 1, 12.5)]


def test_keep_firing_for_holds_through_short_dips() -> None:
    table = SeriesTable()
    sid = table.id_for(Device("p1", "water_pressure"), "pressure")
    rule = ThresholdRule(id="low", metric="pressure", below=0.14, clear=0.16,
                         **{"keep_firing_for": "30s"})
    engine = RuleEngine([rule], table)
    values = [0.1, 0.2, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2]  # back above clear for 10 s, then 50 s
    got = feed(engine, sid, values, step=10 * SEC)
    assert [(f.state.value, (f.ts_ns - T0) // SEC) for f in got] == [
        ("firing", 0), ("resolved", 60)]


def test_late_readings_are_counted_and_never_rewind_state() -> None:
    engine, sid = gas_engine()
    assert brief(feed(engine, sid, [60.0], start=10)) == [
        ("gas-lel-level1", "firing", "major", 10, 60.0),
        ("gas-lel-level2", "firing", "critical", 10, 60.0)]
    # older than the series' last time (and a duplicate time): not evaluated
    assert engine.evaluate(Cols([(sid, T0 + 5 * SEC, 0.0), (sid, T0 + 10 * SEC, 0.0)])) == []
    assert engine.late == 2
    assert feed(engine, sid, [55.0], start=11) == []  # still firing: no new transition


def test_a_late_exceedance_is_a_late_finding_at_its_own_time() -> None:
    engine, sid = gas_engine()
    feed(engine, sid, [0.0] * 10, start=100)  # live: quiet up to T0 + 109 s
    got = engine.evaluate(Cols([(sid, T0 + 50 * SEC, 60.0), (sid, T0 + 51 * SEC, 55.0),
                                (sid, T0 + 52 * SEC, 10.0), (sid, T0 + 53 * SEC, 30.0)]))
    # one late firing per episode of each rule: level 1 from 50 s, level 1 again from 53 s
    # (below its clear at 52 s), level 2 at 50 s (55 is above its clear)
    assert [(f.rule_id, f.state.value, (f.ts_ns - T0) // SEC, f.late) for f in got] == [
        ("gas-lel-level1", "firing", 50, True), ("gas-lel-level2", "firing", 50, True),
        ("gas-lel-level1", "firing", 53, True)]
    assert engine.late == 4
    # later parts of a late episode, in later batches, are not reported again
    assert engine.evaluate(Cols([(sid, T0 + 54 * SEC, 30.0)])) == []
    # live evaluation goes on as if the late readings had never come
    assert feed(engine, sid, [0.0, 30.0], start=110)[0].late is False


def test_late_readings_before_the_last_transition_or_while_firing_are_not_judged() -> None:
    engine, sid = gas_engine()
    feed(engine, sid, [0.0, 60.0, 60.0, 0.0, 0.0], start=10)  # fires at 11, resolves at 13
    assert engine.evaluate(Cols([(sid, T0 + 12 * SEC, 90.0)])) == []  # inside that episode
    assert engine.evaluate(Cols([(sid, T0 + 5 * SEC, 90.0)])) == []  # before it: unknown
    feed(engine, sid, [60.0], start=20)  # firing again
    assert engine.evaluate(Cols([(sid, T0 + 16 * SEC, 90.0)])) == []  # before a firing


def test_late_zscore_reading_is_judged_against_the_history_as_it_is() -> None:
    table = SeriesTable()
    sid = table.id_for(Device("f1", "water_flow"), "flow")
    rng = np.random.default_rng(5)
    rules: list[ZscoreRule] = [
        ZscoreRule(kind="zscore", id="z", metric="flow", z=5.0, halflife="10m"),
        ZscoreRule(kind="zscore", id="zr", metric="flow", z=5.0, robust=True, window=30),
        ZscoreRule(kind="zscore", id="zf", metric="flow", z=5.0, **{"for": "1m"})]
    engine, twin = RuleEngine(rules, table), RuleEngine(rules, table)
    rows = [(sid, T0 + i * 60 * SEC, 50.0 + rng.normal(0, 1.0)) for i in range(200)]
    assert engine.evaluate(Cols(rows)) == twin.evaluate(Cols(rows)) == []
    late = [(sid, T0 + (100 * 60 + 30) * SEC, 90.0), (sid, T0 + (101 * 60 + 30) * SEC, 51.0)]
    got = engine.evaluate(Cols(late))
    assert [(f.rule_id, f.late, f.value) for f in got] == [("z", True, 90.0), ("zr", True, 90.0)]
    for a, b in zip(engine._slots, twin._slots, strict=True):  # the statistics are untouched
        for name in ("count", "mean", "var", "buf", "raw_on", "firing", "last_t"):
            if name in a.state.arrays:
                assert np.array_equal(a.state[name], b.state[name], equal_nan=True), name
    nxt = [(sid, T0 + 200 * 60 * SEC, 50.0), (sid, T0 + 201 * 60 * SEC, 95.0)]
    assert engine.evaluate(Cols(nxt)) == twin.evaluate(Cols(nxt))


def test_zscore_flags_a_spike_once_not_the_noise() -> None:
    rng = np.random.default_rng(7)
    table = SeriesTable()
    sid = table.id_for(Device("f1", "water_flow"), "flow")
    for robust in (False, True):
        rule = ZscoreRule(kind="zscore", id="z", metric="flow", robust=robust)
        engine = RuleEngine([rule], table)
        values = list(100.0 + rng.normal(0, 2.0, 2000))
        values[1500] = 140.0  # 20 sigma
        got = feed(engine, sid, values, step=60 * SEC)
        assert [(f.state.value, (f.ts_ns - T0) // (60 * SEC)) for f in got] == [
            ("firing", 1500), ("resolved", 1501)]


def test_zscore_state_sized_for_100k_series() -> None:
    table = SeriesTable()
    for i in range(100_000):
        table.id_for(Device(f"d{i}", "water_flow"), "flow")
    engine = RuleEngine([ZscoreRule(kind="zscore", id="z", metric="flow")], table)
    rng = np.random.default_rng(1)
    for b in range(3):
        sids = rng.permutation(100_000).astype(np.int64)
        engine.evaluate(Cols(list(zip(sids.tolist(), [T0 + b * 60 * SEC] * 100_000,
                                      rng.normal(5, 1, 100_000).tolist(), strict=True))))
    assert engine.evaluated == 300_000 and engine.late == 0
    assert engine.describe()[0]["series"] == 100_000


def test_rate_burst_drop_and_composite_burst_on_the_grid() -> None:
    rules = load_rules([builtin_rules_dir()])
    table = SeriesTable()
    p = table.id_for(Device("p1", "water_pressure", grid="G7"), "pressure")
    f = table.id_for(Device("f1", "water_flow", grid="G7"), "flow")
    engine = RuleEngine(rules, table)
    rows = []
    rng = np.random.default_rng(3)
    for i in range(120):
        rows.append((p, T0 + i * 60 * SEC, 0.32 + rng.normal(0, 0.002)))
        rows.append((f, T0 + i * 60 * SEC + SEC, 50.0 + rng.normal(0, 1.0)))
    assert engine.evaluate(Cols(rows)) == []
    burst = [(p, T0 + 120 * 60 * SEC, 0.20), (f, T0 + 120 * 60 * SEC + SEC, 90.0),
             (p, T0 + 121 * 60 * SEC, 0.19), (f, T0 + 121 * 60 * SEC + SEC, 92.0)]
    got = engine.evaluate(Cols(burst))
    firing = [(x.rule_id, x.device_id) for x in got if x.state is FindingState.FIRING]
    assert firing == [("water-pressure-burst-drop", "p1"), ("water-flow-surge", "f1"),
                      ("water-burst", "f1")]
    assert next(x for x in got if x.rule_id == "water-burst").severity is Severity.CRITICAL


def test_stale_fires_on_tick_and_resolves_on_the_next_reading() -> None:
    table = SeriesTable()
    sid = table.id_for(Device("g1", "gas_alarm"), "lel")
    engine = RuleEngine([StaleRule(kind="stale", id="s", after="2h")], table)
    feed(engine, sid, [1.0])
    assert engine.tick(T0 + 7199 * SEC) == []
    got = engine.tick(T0 + 7300 * SEC)
    assert [(f.state.value, (f.ts_ns - T0) // SEC) for f in got] == [("firing", 7200)]
    assert engine.tick(T0 + 9000 * SEC) == []  # fires once
    got = feed(engine, sid, [1.0], start=9100)
    assert [(f.state.value, (f.ts_ns - T0) // SEC) for f in got] == [("resolved", 9100)]


def test_stale_gap_inside_a_backfill_gives_a_firing_and_a_resolution() -> None:
    table = SeriesTable()
    sid = table.id_for(Device("g1", "gas_alarm"), "lel")
    engine = RuleEngine([StaleRule(kind="stale", id="s", after="10m")], table)
    rows = [(sid, T0, 1.0), (sid, T0 + 60 * SEC, 1.0), (sid, T0 + 3600 * SEC, 2.0)]
    got = engine.evaluate(Cols(rows))
    assert [(f.state.value, (f.ts_ns - T0) // SEC, f.value) for f in got] == [
        ("firing", 660, 1.0), ("resolved", 3600, 2.0)]


def test_mnf_fires_on_a_night_flow_rise_and_resolves_the_next_normal_night() -> None:
    table = SeriesTable()
    sid = table.id_for(Device("dma-3", "water_flow"), "flow")
    rule = MnfRule(kind="mnf", id="mnf", metric="flow", min_increase=0.5)
    engine = RuleEngine([rule], table, timezone="Asia/Shanghai")
    rows = []
    for minute in range(12 * 24 * 60 // 15):
        t = T0 + minute * 15 * 60 * SEC
        local = dt.datetime.fromtimestamp(t / SEC, dt.timezone(dt.timedelta(hours=8)))
        day = (t - T0) // (86_400 * SEC)
        night = 2 <= local.hour < 4
        leak = 2.0 if day in (8,) else 0.0  # a leak on local night of day 8
        rows.append((sid, t, (3.0 + leak if night else 20.0)))
    got = engine.evaluate(Cols(rows))
    summary = [(f.state.value, dt.datetime.fromtimestamp(f.ts_ns / SEC, dt.UTC).isoformat(),
                f.value) for f in got]
    # 02:00-04:00 Shanghai = 18:00-20:00 UTC the day before; judged at 04:00 local
    assert summary == [("firing", "2026-01-09T20:00:00+00:00", 5.0),
                       ("resolved", "2026-01-10T20:00:00+00:00", 3.0)]


def test_reload_keeps_state_of_unchanged_rules_only() -> None:
    table = SeriesTable()
    sid = table.id_for(Device("g1", "gas_alarm"), "lel")
    slow = ThresholdRule(id="slow", metric="lel", above=25.0, **{"for": "10s"})
    other = ThresholdRule(id="other", metric="lel", above=25.0, **{"for": "10s"})
    engine = RuleEngine([slow, other], table)
    assert feed(engine, sid, [30.0]) == []  # condition starts; `for` not yet elapsed
    changed = ThresholdRule(id="other", metric="lel", above=26.0, **{"for": "10s"})
    added = ThresholdRule(id="new", metric="lel", above=1.0)
    assert engine.reload([slow, changed, added]) == (1, 2)
    got = feed(engine, sid, [30.0], start=10)
    # `slow` kept its condition-start time; `other` changed and starts from zero
    assert sorted(f.rule_id for f in got) == ["new", "slow"]
    assert engine.reloads == 1


def test_reload_rejects_unknown_composite_components() -> None:
    engine, _ = gas_engine()
    bad = CompositeRule(kind="composite", id="c", all=("gas-lel-level1", "nope"))
    with pytest.raises(RulesError, match="unknown rule 'nope'"):
        engine.reload([*engine.rules, bad])
    assert len(engine.rules) == 2


def run_split(tmp_path: Path | None) -> list[tuple[str, str, int, float]]:
    """Same readings; with ``tmp_path`` the engine is saved and rebuilt halfway."""
    rules = [
        ThresholdRule(id="t", metric="lel", above=25.0, **{"for": "30s"}),
        ZscoreRule(kind="zscore", id="z", metric="lel", min_samples=5, z=4.0),
        RateRule(kind="rate", id="r", metric="lel", max_rise=100.0, per="1m"),
        MnfRule(kind="mnf", id="m", metric="lel", baseline_days=2, min_days=1),
        CompositeRule(kind="composite", id="c", any=("t", "z"), min_count=2),
    ]
    devices = {d.id: d for d in (Device("a", "gas_alarm", grid="g"), Device("b", "gas_alarm"))}
    rng = np.random.default_rng(11)
    rows = [(i % 2, T0 + i * 10 * SEC, float(v)) for i, v in enumerate(rng.normal(5, 1, 400))]
    rows[300] = (0, rows[300][1], 40.0)
    rows[302] = (0, rows[302][1], 40.0)
    rows[304] = (0, rows[304][1], 41.0)
    rows[306] = (0, rows[306][1], 42.0)
    table = SeriesTable()
    for d in ("a", "b"):
        table.id_for(devices[d], "lel")
    engine = RuleEngine(rules, table)
    out = engine.evaluate(Cols(rows[:290]))
    if tmp_path is not None:
        path = tmp_path / "state.npz"
        engine.save_state(path)
        table = SeriesTable()
        table.id_for(Device("unknown", "gas_alarm"), "lel")  # ids differ after a restart
        engine = RuleEngine(rules, table)
        assert engine.restore_state(path, devices.get) == 2
        shift = {0: table.lookup("a", "lel"), 1: table.lookup("b", "lel")}
        rows = [(shift[s], t, v) for s, t, v in rows]
    out += engine.evaluate(Cols(rows[290:]))
    return [(f.rule_id, f.device_id, f.ts_ns, f.value) for f in out]


def test_saved_state_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    uninterrupted = run_split(None)
    assert {r[0] for r in uninterrupted} >= {"t", "z", "c"}
    assert run_split(tmp_path) == uninterrupted


def test_corrupt_or_foreign_state_file_is_refused(tmp_path: Path) -> None:
    engine, _ = gas_engine()
    bad = tmp_path / "state.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(RulesError, match="cannot read rule state"):
        engine.restore_state(bad, lambda _: None)
    with pytest.raises(RulesError, match="cannot read rule state"):
        engine.restore_state(tmp_path / "missing.npz", lambda _: None)


def test_builtin_rules_cover_every_device_type_with_catalogue_metrics() -> None:
    catalogue = Catalogue.builtin()
    rules = load_rules([builtin_rules_dir()])
    covered: set[str] = set()
    for rule in rules:
        assert rule.description, rule.id
        if isinstance(rule, CompositeRule):
            continue
        types = rule.device_types or tuple(catalogue.types)
        matched = [t for t in types
                   if any(fnmatch.fnmatchcase(m, rule.metric) for m in catalogue[t].metrics)]
        assert matched, f"{rule.id}: metric {rule.metric!r} not in {types}"
        covered.update(matched)
    assert covered == set(catalogue.types)
    kinds = {r.kind for r in rules}
    assert kinds == {"threshold", "rate", "zscore", "flatline", "stale", "mnf", "composite",
                     "multivariate"}


def test_nan_values_do_not_crash_or_fire() -> None:
    rules = parse_rules('''
[[rule]]
id = "z"
kind = "zscore"
metric = "*"
min_samples = 2
[[rule]]
id = "f"
kind = "flatline"
metric = "*"
window = "1s"
''', source="t.toml")
    table = SeriesTable()
    sid = table.id_for(Device("x", "t"), "m")
    engine = RuleEngine(rules, table)
    assert feed(engine, sid, [float("nan")] * 20) == []


def test_state_of_series_never_evaluated_is_saved_and_restored(tmp_path: Path) -> None:
    table = SeriesTable()
    a = table.id_for(Device("a", "gas_alarm"), "lel")
    engine = RuleEngine([ThresholdRule(id="t", metric="lel", above=25.0)], table)
    feed(engine, a, [30.0])
    table.id_for(Device("b", "gas_alarm"), "lel")  # created after the last batch
    engine.save_state(tmp_path / "s.npz")
    fresh = SeriesTable()
    restored = RuleEngine(engine.rules, fresh)
    devices = {"a": Device("a", "gas_alarm"), "b": Device("b", "gas_alarm")}
    assert restored.restore_state(tmp_path / "s.npz", devices.get) == 2
    assert restored.describe()[0]["firing"] == 1


def test_restored_stale_rules_measure_silence_from_the_service_start(tmp_path: Path) -> None:
    table = SeriesTable()
    dev = Device("g1", "gas_alarm")
    sid = table.id_for(dev, "lel")
    rule = StaleRule(kind="stale", id="s", after="2h")
    engine = RuleEngine([rule], table)
    feed(engine, sid, [1.0])
    engine.save_state(tmp_path / "s.npz")
    restart = T0 + 5 * 3600 * SEC  # the service was down for 5 hours
    again = RuleEngine([rule], SeriesTable())
    again.restore_state(tmp_path / "s.npz", {"g1": dev}.get, now_ns=restart)
    assert again.tick(restart + 3600 * SEC) == []  # no flood of stale alerts at start-up
    got = again.tick(restart + 2 * 3600 * SEC)
    assert [(f.state.value, f.ts_ns) for f in got] == [("firing", restart + 2 * 3600 * SEC)]


def test_rate_spike_filter_ignores_one_spiking_reading_but_not_a_step() -> None:
    table = SeriesTable()
    sid = table.id_for(Device("p1", "water_pressure"), "pressure")
    rules = [r for r in load_rules([builtin_rules_dir()]) if r.id == "water-pressure-burst-drop"]
    engine = RuleEngine(rules, table)
    spike = [0.33, 0.33, 0.82, 0.33, 0.33]  # a spike up and back: no burst
    assert feed(engine, sid, spike, step=60 * SEC) == []
    step = [0.33, 0.21, 0.21, 0.21]  # the pressure falls and stays down: a burst
    got = feed(engine, sid, step, start=5, step=60 * SEC)
    assert [(f.state.value, (f.ts_ns - T0) // (60 * SEC)) for f in got] == [("firing", 6)]
    unfiltered = RuleEngine([rules[0].model_copy(update={"spike_filter": False})], SeriesTable())
    usid = unfiltered.series.id_for(Device("p1", "water_pressure"), "pressure")
    assert [f.state.value for f in feed(unfiltered, usid, spike, step=60 * SEC)] == ["firing"]


def test_rate_at_a_high_report_rate_measures_over_min_span_not_between_readings() -> None:
    rng = np.random.default_rng(11)
    table = SeriesTable()
    sid = table.id_for(Device("p1", "water_pressure"), "pressure")
    burst = RateRule(kind="rate", id="b", metric="pressure", max_drop=0.05, per="1m",
                     window="10m")  # min_span defaults to per
    noisy = burst.model_copy(update={"id": "b0", "min_span_ns": 0})  # between readings
    engine = RuleEngine([burst, noisy], table)
    # a logger reporting every 5 s: noise of a few kPa, then a real fall of 0.1 MPa
    rows = [(sid, T0 + i * 5 * SEC, 0.32 + rng.normal(0, 0.003)) for i in range(720)]
    rows += [(sid, T0 + i * 5 * SEC, 0.22 + rng.normal(0, 0.003)) for i in range(720, 800)]
    got = [(f.rule_id, f.state.value, (f.ts_ns - T0) // SEC) for f in
           engine.evaluate(Cols(rows)) if f.state is FindingState.FIRING]
    assert [g for g in got if g[0] == "b"] == [("b", "firing", 3600)]  # the fall, at once
    assert sum(g[0] == "b0" for g in got) > 5  # consecutive readings: noise bursts


def test_rate_reference_reading_is_at_most_lookback_readings_back() -> None:
    table = SeriesTable()
    sid = table.id_for(Device("d1", "drain"), "level")
    rule = RateRule(kind="rate", id="rise", metric="level", max_rise=0.2, per="5m",
                    min_span="1h", spike_filter=False)
    engine = RuleEngine([rule], table)
    # one reading a minute: the reference is 16 readings (16 min) back, not 1 h; at minute
    # 32 the level rose 0.65 m in 16 min = 0.203 m per 5 min
    flat = feed(engine, sid, [1.0] * 20, step=60 * SEC)
    rise = feed(engine, sid, [1.0 + 0.05 * k for k in range(1, 20)], start=20, step=60 * SEC)
    assert flat == [] and [(f.state.value, (f.ts_ns - T0) // (60 * SEC), round(f.value, 6))
                           for f in rise][:1] == [("firing", 32, 0.203125)]


def test_rate_spike_filter_depth_is_spike_readings() -> None:
    table = SeriesTable()
    sid = table.id_for(Device("p1", "water_pressure"), "pressure")
    deep = RateRule(kind="rate", id="d2", metric="pressure", max_drop=0.05, per="1m")
    shallow = deep.model_copy(update={"id": "d1", "spike_readings": 1})
    deeper = deep.model_copy(update={"id": "d3", "spike_readings": 3})
    engine = RuleEngine([deep, shallow, deeper], table)
    two = [0.33, 0.33, 0.33, 0.82, 0.82, 0.33, 0.33, 0.33]  # up for two readings and back
    got = feed(engine, sid, two, step=60 * SEC)
    assert {f.rule_id for f in got if f.state is FindingState.FIRING} == {"d1"}
    three = [0.33, 0.33, 0.33, 0.33, 0.82, 0.82, 0.82, 0.33, 0.33]
    got = feed(engine, sid, three, start=20, step=60 * SEC)
    assert {f.rule_id for f in got if f.state is FindingState.FIRING} == {"d1", "d2"}
