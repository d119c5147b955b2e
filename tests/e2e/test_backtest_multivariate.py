"""``lifeline backtest`` of a multivariate rule: the JSON lines carry ``detail``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.unit.test_rules_multivariate import SKAB_RULE, write_skab_like


def test_json_lines_name_the_contributing_sensor(tmp_path: Path) -> None:
    rules, csv = tmp_path / "pump.toml", tmp_path / "pump1.csv"
    rules.write_text(SKAB_RULE)
    write_skab_like(csv)
    run = subprocess.run([sys.executable, "-m", "lifeline", "backtest", "--sep", ";", "--json",
                          str(rules), str(csv)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    first = rows[0]
    assert (first["device"], first["metric"], first["state"], first["ts"]) == (
        "pump1", "Accelerometer1RMS", "firing", "2020-03-09T10:11:40+00:00")
    assert first["detail"].split(": ")[1].startswith("Current")
    assert "detail" not in rows[1] and rows[1]["state"] == "resolved"
