"""Rule file loading: valid files, and every validation error names file, rule and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.settings import builtin_rules_dir
from rules.errors import RuleFileError
from rules.kinds import ThresholdRule
from rules.loader import load_rules, parse_rules
from rules.model import Severity, parse_duration_ns


def test_builtin_rules_load_with_gb_t_50493_levels() -> None:
    rules = {r.id: r for r in load_rules([builtin_rules_dir()])}
    lvl1, lvl2 = rules["gas-lel-level1"], rules["gas-lel-level2"]
    assert isinstance(lvl1, ThresholdRule) and isinstance(lvl2, ThresholdRule)
    assert (lvl1.above, lvl1.severity) == (25.0, Severity.MAJOR)
    assert (lvl2.above, lvl2.severity) == (50.0, Severity.CRITICAL)


def test_durations() -> None:
    assert parse_duration_ns("30s") == 30_000_000_000
    assert parse_duration_ns("5m") == 300_000_000_000
    assert parse_duration_ns("7d") == 7 * 86_400_000_000_000
    assert parse_duration_ns("250ms") == 250_000_000
    assert parse_duration_ns(2) == 2_000_000_000
    for bad in ("", "5 minutes", "-1s", True, None, -3):
        with pytest.raises(ValueError):
            parse_duration_ns(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[rule]]\nid = "a"\nmetric = "lel"\nabove = 1\nbogus = 2\n', "rule 'a': field 'bogus'"),
        ('[[rule]]\nid = "a"\nmetric = "lel"\n', "rule 'a'"),
        ('[[rule]]\nid = "a"\nmetric = "lel"\nabove = 1\nbelow = 0\n', "exactly one"),
        ('[[rule]]\nid = "a"\nmetric = "lel"\nabove = 10\nclear = 20\n', "hysteresis"),
        ('[[rule]]\nid = "a"\nmetric = "lel"\nabove = 1\nfor = "soon"\n', "field 'for'"),
        ('[[rule]]\nid = "a"\nmetric = "lel"\nabove = "high"\n', "field 'above'"),
        ('[[rule]]\nid = "a"\nmetric = "lel"\nabove = 1\nseverity = "apocalyptic"\n',
         "field 'severity'"),
        ('[[rule]]\nid = "a"\nmetric = "lel"\nkind = "magic"\nabove = 1\n', "unknown kind"),
        ('[[rule]]\nid = "has space"\nmetric = "lel"\nabove = 1\n', "field 'id'"),
        ('[[rule]]\nmetric = "lel"\nabove = 1\n', "rule #1"),
        ('rule = 5\n', "array of tables"),
        ('[rules]\nx = 1\n', "unknown top-level"),
        ('[[rule]]\nid = "a"\nmetric = "lel"\nabove = 1\n[[rule]\n', "line 5"),
    ],
)
def test_validation_errors_name_file_rule_and_field(text: str, expected: str) -> None:
    with pytest.raises(RuleFileError) as info:
        parse_rules(text, source="site.toml")
    assert str(info.value).startswith("site.toml: ")
    assert expected in str(info.value)


def test_missing_file_and_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match="not found"):
        load_rules([tmp_path / "nope.toml"])
    body = '[[rule]]\nid = "a"\nmetric = "lel"\nabove = 1\n'
    (tmp_path / "one.toml").write_text(body)
    (tmp_path / "two.toml").write_text(body)
    with pytest.raises(RuleFileError, match="duplicate id"):
        load_rules([tmp_path])


R = '[[rule]]\nid = "a"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # rate
        (R + 'kind = "rate"\nmetric = "p"\n', "exactly one of 'max_rise' or 'max_drop'"),
        (R + 'kind = "rate"\nmetric = "p"\nmax_rise = -1\n', "field 'max_rise'"),
        (R + 'kind = "rate"\nmetric = "p"\nmax_drop = 1\nper = "0s"\n', "field 'per'"),
        (R + 'kind = "rate"\nmetric = "p"\nmax_drop = 1\nclear = 2\n', "hysteresis"),
        (R + 'kind = "rate"\nmetric = "p"\nmax_drop = 1\nwindow = "1 fortnight"\n',
         "field 'window'"),
        (R + 'kind = "rate"\nmetric = "p"\nmax_drop = 1\nmin_span = "-1s"\n',
         "field 'min_span'"),
        (R + 'kind = "rate"\nmetric = "p"\nmax_drop = 1\nmin_span = "soon"\n',
         "field 'min_span'"),
        (R + 'kind = "rate"\nmetric = "p"\nmax_drop = 1\nspike_readings = 0\n',
         "field 'spike_readings'"),
        (R + 'kind = "rate"\nmetric = "p"\nmax_drop = 1\nspike_readings = 9\n',
         "field 'spike_readings'"),
        (R + 'kind = "rate"\nmetric = "p"\nmax_drop = 1\nspike_readings = 1.5\n',
         "field 'spike_readings'"),
        # zscore
        (R + 'kind = "zscore"\nmetric = "p"\nz = 0\n', "field 'z'"),
        (R + 'kind = "zscore"\nmetric = "p"\nhalflife = "soon"\n', "field 'halflife'"),
        (R + 'kind = "zscore"\nmetric = "p"\nhalflife = 0\n', "field 'halflife'"),
        (R + 'kind = "zscore"\nmetric = "p"\nmin_samples = 1\n', "field 'min_samples'"),
        (R + 'kind = "zscore"\nmetric = "p"\nz = 3\nclear = 4\n', "hysteresis"),
        (R + 'kind = "zscore"\nmetric = "p"\ndirection = "sideways"\n', "field 'direction'"),
        (R + 'kind = "zscore"\nmetric = "p"\nrobust = true\nwindow = 2\n', "field 'window'"),
        (R + 'kind = "zscore"\nmetric = "p"\nz = nan\n', "field 'z'"),
        # flatline
        (R + 'kind = "flatline"\nmetric = "p"\ntolerance = -0.1\n', "field 'tolerance'"),
        (R + 'kind = "flatline"\nmetric = "p"\nwindow = "0s"\n', "field 'window'"),
        (R + 'kind = "flatline"\nmetric = "p"\nrelative_tolerance = 2\n',
         "field 'relative_tolerance'"),
        # stale
        (R + 'kind = "stale"\n', "field 'after'"),
        (R + 'kind = "stale"\nafter = "1h"\nfor = "1m"\n', "do not apply to stale"),
        # mnf
        (R + 'kind = "mnf"\nmetric = "flow"\nwindow = "04:00-02:00"\n', "field 'window'"),
        (R + 'kind = "mnf"\nmetric = "flow"\nwindow = "2am"\n', "field 'window'"),
        (R + 'kind = "mnf"\nmetric = "flow"\nbaseline_days = 1\n', "field 'baseline_days'"),
        (R + 'kind = "mnf"\nmetric = "flow"\nbaseline_days = 3\nmin_days = 5\n', "min_days"),
        (R + 'kind = "mnf"\nmetric = "flow"\nincrease = 0\n', "field 'increase'"),
        # composite
        (R + 'kind = "composite"\n', "exactly one of 'all' or 'any'"),
        (R + 'kind = "composite"\nall = ["x"]\nany = ["y"]\n', "exactly one of 'all' or 'any'"),
        (R + 'kind = "composite"\nall = ["x"]\nscope = "city"\n', "field 'scope'"),
        (R + 'kind = "composite"\nall = ["x"]\nfor = "1m"\n', "do not apply to composite"),
        (R + 'kind = "composite"\nall = ["x"]\nmin_count = 2\n', "only to 'any'"),
        # shared fields and unknown keys
        (R + 'kind = "zscore"\nmetric = "p"\nzz = 3\n', "field 'zz': unknown key"),
        (R + 'kind = "mnf"\nmetric = "flow"\nbaseline = 7\n', "field 'baseline': unknown key"),
        (R + 'metric = "p"\nabove = 1\nkeep_firing_for = "-1s"\n', "field 'keep_firing_for'"),
        (R + 'metric = "p"\nabove = 1\nlimit = "max"\n', "field 'limit'"),
        (R + 'metric = "p"\nabove = inf\n', "field 'above'"),
        (R + 'metric = "p"\nabove = 1\nfor = "99999d"\n', "field 'for'"),
        (R + 'kind = 7\nmetric = "p"\n', "unknown kind 7"),
        ('[[rule]]\nid = ""\nmetric = "p"\nabove = 1\n', "field 'id'"),
        (R + 'metric = ""\nabove = 1\n', "field 'metric'"),
    ],
)
def test_every_kind_validates_with_file_rule_and_field(text: str, expected: str) -> None:
    with pytest.raises(RuleFileError) as info:
        parse_rules(text, source="site.toml")
    message = str(info.value)
    assert message.startswith("site.toml: rule ")
    assert expected in message


def test_composite_references_are_checked_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[[rule]]\nid = "drop"\nkind = "rate"\nmetric = "p"\n'
                                     'max_drop = 0.1\n')
    (tmp_path / "b.toml").write_text('[[rule]]\nid = "burst"\nkind = "composite"\n'
                                     'all = ["drop", "surge"]\n')
    with pytest.raises(RuleFileError) as info:
        load_rules([tmp_path])
    assert str(info.value) == (f"{tmp_path / 'b.toml'}: rule 'burst': field 'all': "
                               "unknown rule 'surge'")
    (tmp_path / "c.toml").write_text('[[rule]]\nid = "surge"\nkind = "composite"\n'
                                     'any = ["drop"]\n')
    with pytest.raises(RuleFileError, match="'surge' is itself a composite"):
        load_rules([tmp_path])
    (tmp_path / "c.toml").write_text('[[rule]]\nid = "surge"\nkind = "zscore"\nmetric = "f"\n')
    assert [r.id for r in load_rules([tmp_path])] == ["drop", "burst", "surge"]


def test_empty_directory_oversized_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match=r"no \*\.toml rule files"):
        load_rules([tmp_path])
    big = tmp_path / "big.toml"
    big.write_text("# x\n" * 300_000)
    with pytest.raises(RuleFileError, match="larger than"):
        load_rules([big])
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00rule")
    with pytest.raises(RuleFileError, match="cannot read"):
        load_rules([binary])


def test_all_kinds_parse_with_durations_and_defaults() -> None:
    rules = parse_rules('''
[[rule]]
id = "r"
kind = "rate"
metric = "pressure"
max_drop = 0.05
per = "1m"
window = "10m"
keep_firing_for = "15m"

[[rule]]
id = "z"
kind = "zscore"
metric = "flow"
halflife = "1h"

[[rule]]
id = "s"
kind = "stale"
after = "7d"
''', source="x.toml")
    r, z, s = rules
    assert (r.per_ns, r.window_ns, r.keep_firing_for_ns) == (60 * 10**9, 600 * 10**9,
                                                             900 * 10**9)
    assert (r.span_ns, r.spike_readings, r.depth) == (60 * 10**9, 2, 2)  # min_span = per
    assert z.kind == "zscore" and z.z == 5.0 and z.clear_z == 3.75 and z.min_samples == 30
    assert s.metric == "*" and s.after_ns == 7 * 86_400 * 10**9
