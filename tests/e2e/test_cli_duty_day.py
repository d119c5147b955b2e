"""The CLI for a duty officer's day: --version, paged device lists, an Excel export,
the log settings honoured by every command, progress that keeps stdout clean."""

from __future__ import annotations

import codecs
import io
import logging
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from devices.inventory import write_csv
from devices.model import Device
from lifeline.cli import main
from lifeline.progress import Progress
from tests.support import clean_env

pytestmark = pytest.mark.e2e
LIFELINE = [sys.executable, "-m", "lifeline"]


def _inventory(path: Path, n: int) -> None:
    devices = [Device(f"gas-{i:05d}", "gas_alarm", grid=f"G{i % 9}", district="东城区",
                      unit="燃气集团", name=f"燃气报警器 {i} 号") for i in range(n)]
    with path.open("w", encoding="utf-8", newline="") as handle:
        write_csv(handle, devices)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "lifeline.toml"
    config.write_text("", encoding="utf-8")
    monkeypatch.setenv("LIFELINE_CONFIG", str(config))
    monkeypatch.setenv("LIFELINE_RUN_DIR", str(tmp_path / "run"))
    for name in ("LIFELINE_LOG_LEVEL", "LIFELINE_LOG_FORMAT", "LIFELINE_DATABASE__URL"):
        monkeypatch.delenv(name, raising=False)
    return config


def test_version() -> None:
    proc = subprocess.run([*LIFELINE, "--version"], capture_output=True, env=clean_env(),
                          check=True)
    assert proc.stdout.decode().strip() == "lifeline 0.1.0"


def test_devices_list_pages_with_a_total_and_a_header(
        cli: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _inventory(tmp_path / "inv.csv", 250)
    assert main(["devices", "import", str(tmp_path / "inv.csv")]) == 0
    capsys.readouterr()
    assert main(["devices", "list"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "GRID", "DISTRICT", "UNIT", "NAME"]
    assert len(lines) == 101 and lines[1].startswith("gas-00000 ")
    assert "showing 1\u2013100 of 250 devices" in err
    assert "more: --offset 100, or --all" in err
    assert main(["devices", "list", "--offset", "200", "--limit", "100"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 51 and out.splitlines()[1].startswith("gas-00200 ")
    assert "showing 201\u2013250 of 250 devices" in err and "more:" not in err
    assert main(["devices", "list", "--all", "--json", "--grid", "G1"]) == 0
    out, err = capsys.readouterr()
    rows = [orjson.loads(line) for line in out.splitlines()]  # stdout: JSON only
    assert len(rows) == 28 and {r["grid"] for r in rows} == {"G1"}
    assert "showing 1\u201328 of 28 devices" in err
    assert main(["devices", "list", "--all", "--json"]) == 0  # more than one page of --all
    assert len(capsys.readouterr().out.splitlines()) == 250
    assert main(["devices", "list", "--limit", "0"]) == 2


def test_excel_export_has_a_bom_and_reads_back(
        cli: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _inventory(tmp_path / "inv.csv", 5)
    assert main(["devices", "import", str(tmp_path / "inv.csv")]) == 0
    out = tmp_path / "excel.csv"
    assert main(["devices", "export", str(out), "--excel"]) == 0
    data = out.read_bytes()
    assert data.startswith(codecs.BOM_UTF8)
    assert "燃气报警器 3 号" in data[3:].decode("utf-8")
    assert not (tmp_path / "plain.csv").exists()
    assert main(["devices", "export", str(tmp_path / "plain.csv")]) == 0
    assert not (tmp_path / "plain.csv").read_bytes().startswith(codecs.BOM_UTF8)
    capsys.readouterr()
    assert main(["devices", "import", str(out)]) == 0
    assert "0 created, 0 updated, 5 unchanged" in capsys.readouterr().out
    assert main(["devices", "export", str(tmp_path / "x.json"), "--excel"]) == 2


def test_commands_log_as_the_settings_say(
        cli: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _inventory(tmp_path / "inv.csv", 3)
    cli.write_text('log_format = "json"\n', encoding="utf-8")
    assert main(["devices", "import", str(tmp_path / "inv.csv")]) == 0
    err = capsys.readouterr().err
    records = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(r["msg"].startswith("devices upserted") and r["level"] == "INFO"
               for r in records), err
    assert " INFO " not in err  # no plain-text log line
    cli.write_text('log_format = "json"\nlog_level = "WARNING"\n', encoding="utf-8")
    assert main(["devices", "import", str(tmp_path / "inv.csv")]) == 0
    assert "devices upserted" not in capsys.readouterr().err
    # --log-level on the command line still wins over the setting
    assert main(["--log-level", "INFO", "devices", "import", str(tmp_path / "inv.csv")]) == 0
    assert "devices upserted" in capsys.readouterr().err


def test_progress_redraws_on_a_terminal_and_logs_otherwise(
        caplog: pytest.LogCaptureFixture) -> None:
    tty = io.StringIO()
    progress = Progress("simulate x", 100, unit="simulated s", stream=tty, tty=True)
    progress._last -= 1  # as if the last redraw was a second ago
    progress.update(50, "1,000 messages")
    assert tty.getvalue().startswith("\r\x1b[2Ksimulate x: 50/100 simulated s (50%)")
    assert "1,000 messages" in tty.getvalue()
    progress.update(60)  # throttled
    assert "60/100" not in tty.getvalue()
    progress.close()
    assert tty.getvalue().endswith("\r\x1b[2K")
    caplog.set_level(logging.INFO, logger="lifeline.progress")
    piped = io.StringIO()
    progress = Progress("evaluate x", None, stream=piped, tty=False, interval_s=0.0)
    progress.update(7)
    progress.close()
    assert piped.getvalue() == ""  # not a terminal: a log line instead
    assert [r.getMessage() for r in caplog.records][-1].startswith("progress: evaluate x: 7,")
