"""Hostile rule files, config files, catalogues and inventory CSV: every one refused with a
clear error naming the file and the bound, never a crash, a hang or a blown memory."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from common import safetoml
from devices.catalogue import Catalogue
from devices.errors import CatalogueError, InventoryError
from devices.inventory import (
    MAX_FILE_BYTES,
    csv_escape,
    csv_unescape,
    parse_csv,
    read_file,
    write_csv,
)
from lifeline.errors import ConfigError
from lifeline.settings import load_settings
from rules.errors import RuleFileError
from rules.loader import load_rule_file, parse_rules
from simulators.errors import ScenarioError
from simulators.scenario import parse_scenario

RULE = """
[[rule]]
id = "gas-high"
metric = "lel"
device_types = ["gas_alarm"]
above = 20.0
severity = "critical"
description = "lel above 20 %LEL"
"""


def nested_array(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize("text", [
    "x = " + nested_array(100_000),                        # RecursionError in tomllib
    "x = " + "{a=" * 100_000 + "1" + "}" * 100_000,        # nested inline tables
    "a." * 100_000 + "b = 1",                               # quadratic dotted key: OOM
    "[" + "a." * 5_000 + "b]",                              # the same in a table header
    "x = [\n" + "[\n" * 40 + "]\n" * 40 + "]",              # nesting across lines
])
def test_hostile_toml_is_refused_quickly_with_the_bound(text: str) -> None:
    with pytest.raises(RuleFileError, match=r"nested deeper than 32|more than 128 dots"):
        parse_rules(text, source="evil.toml")


def test_toml_bounds_are_exact_and_ignore_strings_and_comments() -> None:
    safetoml.loads("x = " + nested_array(31))  # 31 + the array itself = 32 levels: accepted
    with pytest.raises(safetoml.TomlLimitError, match="nested deeper than 32"):
        safetoml.loads("x = " + nested_array(33))
    safetoml.loads("a" + ".a" * 128 + " = 1")
    with pytest.raises(safetoml.TomlLimitError, match="more than 128 dots"):
        safetoml.loads("a" + ".a" * 129 + " = 1")
    # brackets and dots inside strings and comments do not count
    ok = ('s = "' + "[{." * 500 + '"\nl = \'' + "[" * 500 + "'\n# " + "[" * 500 + "\n"
          + 'm = """\n' + "{." * 500 + '\n"""\n' + 'e = "\\"[[[["\n')
    assert safetoml.loads(ok)["l"] == "[" * 500
    with pytest.raises(safetoml.TomlLimitError, match="larger than"):
        safetoml.loads("x = 1\n" * 200_000)


def test_the_shipped_toml_files_pass_the_bounds() -> None:
    root = Path(__file__).resolve().parents[2]
    files = [p for p in root.rglob("*.toml") if ".venv" not in p.parts]
    assert len(files) >= 5
    for path in files:
        safetoml.check_shape(path.read_text("utf-8"))


def test_hostile_rule_files(tmp_path: Path) -> None:
    assert parse_rules(RULE, source="ok.toml")[0].id == "gas-high"
    big = tmp_path / "big.toml"
    big.write_text(RULE + "#" * 1_000_001, "utf-8")
    with pytest.raises(RuleFileError, match="larger than 1000000 bytes"):
        load_rule_file(big)
    binary = tmp_path / "nul.toml"
    binary.write_bytes(b"\xff\xfe" + RULE.encode("utf-16-le"))
    with pytest.raises(RuleFileError, match="cannot read rule file"):
        load_rule_file(binary)
    with pytest.raises(RuleFileError, match="TOML syntax error"):
        parse_rules(RULE.replace("lel", "l\x00el"), source="nul.toml")
    # unicode ids and descriptions are fine where the model allows them; a BOM is not TOML
    with pytest.raises(RuleFileError, match="TOML syntax error"):
        parse_rules("\ufeff" + RULE, source="bom.toml")


def test_hostile_config_file(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("[api]\nx = " + nested_array(5000) + "\n", "utf-8")
    with pytest.raises(ConfigError, match="nested deeper than 32"):
        load_settings(deep)
    big = tmp_path / "big.toml"
    big.write_text("#" * (safetoml.MAX_TOML_BYTES + 1), "utf-8")
    with pytest.raises(ConfigError, match="larger than 1000000 bytes"):
        load_settings(big)


def test_hostile_catalogue_and_scenario(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="nested deeper"):
        Catalogue.from_toml("x = " + nested_array(5000), source="cat.toml")
    bad = tmp_path / "cat.toml"
    bad.write_bytes(b"[x]\nname = \"\xff\"\n")
    with pytest.raises(CatalogueError, match="cannot read catalogue"):
        Catalogue.load(bad)
    with pytest.raises(ScenarioError, match="more than 128 dots"):
        parse_scenario("a." * 10_000 + "b = 1", source="sc.toml")


# ---------------------------------------------------------------- inventory CSV


def test_formula_injection_is_neutralised_on_export_and_round_trips() -> None:
    catalogue = Catalogue.builtin()
    evil = ("=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "'=already", "=HYPERLINK(\"x\")")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "type", "name", "address"])
    writer.writerows([f"dev-{i}", "gas_alarm", name, name] for i, name in enumerate(evil))
    text = buf.getvalue()
    parsed = parse_csv(text, catalogue)
    assert parsed.problems == []
    # a spreadsheet's own escape '= is read as the text after the quote
    assert [d.name for d in parsed.devices] == [csv_unescape(n) for n in evil]
    out = io.StringIO()
    write_csv(out, parsed.devices)
    for line in out.getvalue().splitlines()[1:]:
        for cell in line.split(","):
            assert not cell.lstrip('"').startswith(("=", "+", "@")), line
    again = parse_csv(out.getvalue(), catalogue)
    assert [d.name for d in again.devices] == [d.name for d in parsed.devices]
    for text in ("'x", "'=x", "''", "plain", "-"):
        assert csv_unescape(csv_escape(text)) == text


def test_hostile_csv_content_is_reported_per_row() -> None:
    catalogue = Catalogue.builtin()
    text = ("\ufeffid,type,name\n"             # a BOM before the header (Excel's UTF-8 CSV)
            "gas-1,gas_alarm,燃气报警器 一号\n"  # unicode names are fine
            "gas-2,gas_alarm,bad\x00name\n"     # NUL byte
            "gas-\u0663,gas_alarm,x\n"          # a non-ASCII digit in the id
            # a field past the csv module's limit (1 MB once rules.backtest is imported)
            "gas-4,gas_alarm," + "x" * 1_100_000 + "\n")
    parsed = parse_csv(text.removeprefix("\ufeff"), catalogue)
    assert [d.id for d in parsed.devices] == ["gas-1"]
    reasons = {p.where: " ".join(p.reasons) for p in parsed.problems}
    assert "control characters" in reasons["line 3"]
    assert "invalid device id" in reasons["line 4"]
    assert "CSV syntax" in reasons["line 5"]


def test_inventory_file_size_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    with big.open("wb") as handle:
        handle.write(b"id,type\n")
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(InventoryError, match=f"larger than {MAX_FILE_BYTES} bytes"):
        read_file(big, Catalogue.builtin())
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfid,type\ngas-1,gas_alarm\n")
    assert [d.id for d in read_file(bom, Catalogue.builtin()).devices] == ["gas-1"]
