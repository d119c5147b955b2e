"""`lifeline evaluate` through the CLI: shipped scenarios scored against their ground truth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support import clean_env

pytestmark = pytest.mark.e2e
LIFELINE = [sys.executable, "-m", "lifeline", "--log-level", "ERROR"]


def evaluate(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = clean_env()
    return subprocess.run([*LIFELINE, "evaluate", *args], env=env, capture_output=True,
                          timeout=300, cwd=cwd)


@pytest.mark.parametrize(
    ("scenario", "kinds"),
    [
        ("gas-leak-residential", ["gas_leak", "gas_rupture"]),
        ("main-burst-morning-peak", ["main_burst"]),
        ("storm-drains", ["rain", "blocked_drain"]),
        ("broker-outage", ["broker_outage"]),
    ],
)
def test_shipped_scenarios_meet_their_targets(tmp_path: Path, scenario: str,
                                              kinds: list[str]) -> None:
    proc = evaluate(scenario, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    report = orjson.loads(proc.stdout)
    assert report["scenario"] == scenario and report["targets_met"] is True
    assert [i["kind"] for i in report["incidents"]] == kinds
    assert report["false_cases"] == 0 and report["sensor_faults_as_process_cases"] == 0
    for inc in report["incidents"]:
        if inc["expect_case"]:
            assert inc["detected"] and inc["cases"] == 1
            if inc["target_s"] is not None:
                assert inc["time_to_detect_s"] <= inc["target_s"]


def test_a_scenario_file_and_bad_input(tmp_path: Path) -> None:
    leak = tmp_path / "leak.toml"
    leak.write_text('[scenario]\nname = "one-leak"\nduration = "1h"\n'
                    '[fleet]\ndevices = { gas_alarm = 40 }\n'
                    '[[incident]]\nkind = "gas_leak"\nat = "5m"\nrate = 2.0\n')
    proc = evaluate(str(leak), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"one-leak" in proc.stdout and b"targets met" in proc.stdout
    bad = evaluate("no-such-scenario", cwd=tmp_path)
    assert bad.returncode == 2 and b"no shipped scenario" in bad.stderr
    leak.write_text('[scenario]\nname = "x"\n[[incident]]\nkind = "meteor"\n')
    broken = evaluate(str(leak), cwd=tmp_path)
    assert broken.returncode == 2 and b"unknown incident kind" in broken.stderr
    assert b"Traceback" not in broken.stderr
