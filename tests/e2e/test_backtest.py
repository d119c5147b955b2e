"""``lifeline backtest``: the real CLI over CSV files in tests/e2e/data, no service running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
DATA = Path(__file__).parent / "data"
BUILTIN = Path(__file__).parents[2] / "rules" / "builtin"


def backtest(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lifeline", "backtest", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_gas_csv_json_lines_show_levels_hysteresis_and_stale_gap() -> None:
    run = backtest(BUILTIN, DATA / "kitchen-01.csv", "--device-type", "gas_alarm", "--json")
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(r["rule"], r["state"], r["severity"], r["ts"], r["value"]) for r in rows] == [
        ("gas-lel-level1", "firing", "major", "2026-01-01T08:03:00+00:00", 26.0),
        ("gas-lel-level1", "resolved", "major", "2026-01-01T08:07:00+00:00", 19.0),
        ("gas-lel-level1", "firing", "major", "2026-01-01T08:09:00+00:00", 51.0),
        ("gas-lel-level2", "firing", "critical", "2026-01-01T08:09:00+00:00", 51.0),
        ("gas-lel-level2", "resolved", "critical", "2026-01-01T08:12:00+00:00", 44.0),
        ("gas-lel-level1", "resolved", "major", "2026-01-01T08:14:00+00:00", 10.0),
        ("gas-alarm-stale", "firing", "minor", "2026-01-01T10:17:00+00:00", 1.0),
        ("gas-alarm-stale", "resolved", "minor", "2026-01-01T11:30:00+00:00", 0.5),
    ]
    assert {(r["device"], r["metric"]) for r in rows} == {("kitchen-01", "lel")}
    assert set(rows[0]) == {"device", "metric", "rule", "severity", "state", "ts", "value"}
    assert "skipped non-numeric column kitchen-01.csv:label" in run.stderr


def test_epoch_ms_time_column_separator_and_table_output() -> None:
    run = backtest(BUILTIN, DATA / "logger-7.csv", DATA / "kitchen-01.csv", "--sep", ";",
                   "--time-column", "ts", "--device-type", "water_pressure")
    # kitchen-01.csv has no 'ts' column: the error names the file
    assert run.returncode == 2
    assert "kitchen-01.csv: no time column 'ts'" in run.stderr
    run = backtest(BUILTIN, DATA / "logger-7.csv", "--sep", ";", "--time-column", "ts",
                   "--device-type", "water_pressure", "--timezone", "Asia/Shanghai")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["TS", "DEVICE", "METRIC", "RULE", "SEVERITY", "STATE", "VALUE"]
    body = [line.split() for line in lines[1:]]
    assert [(b[0], b[3], b[5]) for b in body] == [
        ("2026-01-01T08:04:00+08:00", "water-pressure-burst-drop", "firing"),
        ("2026-01-01T08:06:00+08:00", "water-pressure-low", "firing"),
        ("2026-01-01T08:10:00+08:00", "water-pressure-low", "resolved"),
    ]
    assert "2 firing and 1 resolved" in run.stderr


def test_single_rule_file_and_directory_of_user_rules(tmp_path: Path) -> None:
    rules = tmp_path / "mine.toml"
    rules.write_text('[[rule]]\nid = "co"\nmetric = "co_ppm"\nabove = 3\nseverity = "info"\n')
    run = backtest(rules, DATA / "kitchen-01.csv", "--json")
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(r["rule"], r["state"], r["ts"]) for r in rows] == [
        ("co", "firing", "2026-01-01T08:00:00+00:00")]


@pytest.mark.parametrize(
    ("csv_text", "args", "message"),
    [
        ("", (), "empty file or no header"),
        ("time,lel\n2026-01-01 00:00:00,1\nyesterday,2\n", (), "bad.csv:3: bad timestamp"),
        ("time;lel\n2026-01-01 00:00:00;1\n", (), "need a time column and at least one"),
        ("time,lel\n2026-01-01 00:00:00,1,7\n", (), "bad.csv:2: 3 fields, header has 2"),
        ("time,lel\n2026-01-01 00:00:00,1\n", ("--sep", "ab"), "--sep must be one character"),
        ("time,lel\n2026-01-01 00:00:00,1\n", ("--timezone", "Mars/Olympus"),
         "unknown --timezone"),
        ("\x00\xff\xfe", (), "bad.csv"),
        ("time,lel\n2026-02-28 00:00:00,1\n2026-02-30 00:00:00,2\n", (),
         "bad.csv:3: bad timestamp '2026-02-30 00:00:00'"),
    ],
)
def test_malformed_input_exits_2_and_names_the_file(tmp_path: Path, csv_text: str,
                                                    args: tuple[str, ...], message: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(csv_text.encode("latin-1"))
    run = backtest(BUILTIN, bad, *args)
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_bad_rules_and_missing_csv(tmp_path: Path) -> None:
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nid = "x"\nkind = "zscore"\nmetric = "lel"\nz = -1\n')
    run = backtest(rules, DATA / "kitchen-01.csv")
    assert run.returncode == 2 and "rule 'x': field 'z'" in run.stderr
    run = backtest(BUILTIN, tmp_path / "nope.csv")
    assert run.returncode == 2 and "nope.csv: cannot read" in run.stderr


def test_numeric_noise_inf_and_epoch_seconds(tmp_path: Path) -> None:
    csv_file = tmp_path / "dev.csv"
    csv_file.write_text("t,lel\n1767225600,1\n1767225660,inf\n1767225720,NaN\n"
                        "1767225780,55\n1767225780,0\n")
    run = backtest(BUILTIN, csv_file, "--device-type", "gas_alarm", "--json")
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(r["rule"], r["ts"]) for r in rows] == [
        ("gas-lel-level1", "2026-01-01T00:03:00+00:00"),
        ("gas-lel-level2", "2026-01-01T00:03:00+00:00")]
