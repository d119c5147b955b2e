"""Rule file loading: valid files, and every validation error names file, rule and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.settings import builtin_rules_dir
from rules.errors import RuleFileError
from rules.loader import load_rules, parse_rules
from rules.model import Severity, ThresholdRule, parse_duration_ns


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
