"""`lifeline demo --duration 30` prints the summary and leaves no process behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import clean_env

pytestmark = pytest.mark.e2e


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = next(
                (line.split()[1] for line in (entry / "status").read_text().splitlines()
                 if line.startswith("State:")), "")
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_demo_runs_30_seconds_prints_summary_and_stops_everything(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    env = clean_env()
    proc = subprocess.run(
        [sys.executable, "-m", "lifeline", "demo", "--duration", "30", "--devices", "100",
         "--rate", "300", "--run-dir", str(run_dir)],
        env=env, capture_output=True, timeout=240, cwd=tmp_path,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert "citylifeline demo summary" in out
    table = dict(re.findall(r"^(\S.*?)\s{2,}([\d,]+)$", out, flags=re.M))
    numbers = {k: int(v.replace(",", "")) for k, v in table.items()}
    assert numbers["readings published"] > 20_000
    assert numbers["readings stored in InfluxDB (queried back)"] == numbers["readings published"]
    assert numbers["alerts raised (alert.firing)"] >= 1
    assert numbers["webhooks received (signature valid)"] >= numbers["alerts raised (alert.firing)"]
    assert numbers["messages dead-lettered"] == numbers["malformed payloads published"] == 3
    assert numbers["webhooks with a bad signature"] == 0
    assert re.search(r"\[\s*\d+\.\ds\] published", out), "no live progress lines"
    assert processes_mentioning(str(run_dir)) == []
