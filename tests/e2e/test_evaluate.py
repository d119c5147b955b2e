"""`lifeline evaluate` through the CLI: shipped scenarios scored against their ground truth."""

from __future__ import annotations

import re
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
    proc = evaluate(scenario, "--offline", "--json", cwd=tmp_path)
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
    proc = evaluate(str(leak), "--offline", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"one-leak" in proc.stdout and b"targets met" in proc.stdout
    bad = evaluate("no-such-scenario", "--offline", cwd=tmp_path)
    assert bad.returncode == 2 and b"no shipped scenario" in bad.stderr
    leak.write_text('[scenario]\nname = "x"\n[[incident]]\nkind = "meteor"\n')
    broken = evaluate(str(leak), "--offline", cwd=tmp_path)
    assert broken.returncode == 2 and b"unknown incident kind" in broken.stderr
    assert b"Traceback" not in broken.stderr


ONLINE = """
[scenario]
name = "online-leak"
seed = 5
start = "2026-03-01T09:00:00+08:00"
duration = "40m"
[fleet]
districts = 1
grids = 2
devices = { gas_alarm = 12, water_pressure = 6 }
[[incident]]
kind = "gas_leak"
at = "5m"
rate = 5.0
[[incident]]
kind = "spike"
at = "5m"
metric = "pressure"
rate = 0.2
magnitude = 2.5
"""


def test_online_through_the_service_scores_its_webhooks(tmp_path: Path) -> None:
    """Mosquitto, InfluxDB and `lifeline serve` (on event time: the scenario lies months
    in the past and runs 240 times faster than real time); scored from the webhooks."""
    (tmp_path / "online.toml").write_text(ONLINE)
    proc = evaluate(str(tmp_path / "online.toml"), "--json", "--speed", "240",
                    "--duration", "30m", "--work-dir", str(tmp_path / "work"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    report = orjson.loads(proc.stdout)
    assert report["mode"] == "online" and report["duration_h"] == 0.5
    assert report["webhooks"] > 0 and report["bad_signatures"] == 0
    leak, spike = report["incidents"]
    assert leak["kind"] == "gas_leak" and leak["detected"] and leak["cases"] == 1
    assert 0.0 <= leak["time_to_detect_s"] <= 60.0
    assert spike["kind"] == "spike" and spike["cases"] == 0
    assert report["false_cases"] == 0 and report["targets_met"] is True
    # every published message reached the service and none was dead-lettered (ts_past)
    log = (tmp_path / "work" / "online-leak" / "serve.log").read_text()
    stopped = re.search(r"stopped: received=(\d+) stored=\d+ dead=(\d+)", log)
    assert stopped is not None and stopped.groups() == (str(report["messages"]), "0")



def test_online_broker_outage_loses_nothing_and_marks_no_device_offline(
        tmp_path: Path) -> None:
    """The shipped scenario's first 30 minutes: the private broker is really stopped for
    the outage (5 simulated minutes, longer than the 60 s loggers' silence window) and
    started again on the same port; the runner reconnects and re-sends, the loggers
    forward what they stored, and the service marks no device offline."""
    proc = evaluate("broker-outage", "--json", "--duration", "30m",
                    "--work-dir", str(tmp_path / "work"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    report = orjson.loads(proc.stdout)
    assert report["targets_met"] is True and report["cases"] == 0
    assert report["lost"] == 0 and report["publish_failed"] == 0
    assert report["received"] >= report["messages"] > 0
    outage = report["outage"]
    assert outage["reconnects"] >= 1  # the broker really went away
    assert outage["withheld_readings"] > 0 and outage["forwarded_messages"] > 0
    assert outage["lost_at_device"] > 0
    log = (tmp_path / "work" / "broker-outage" / "serve.log").read_text()
    assert "ingest path down" in log and "ingest path reconnected" in log
    assert "device offline" not in log


@pytest.mark.parametrize(
    ("scenario", "rules", "duration", "kinds"),
    [
        ("pump-station-faults", "pump-station-zscore", "3d", ["bearing_wear", "cavitation"]),
        ("water-network-leaks", "water-network-zscore", "2d", ["network_leak"]),
    ],
)
def test_simulated_sources_score_each_detector(tmp_path: Path, scenario: str, rules: str,
                                               duration: str, kinds: list[str]) -> None:
    proc = evaluate(scenario, "--offline", "--json", "--rules", rules, "--duration", duration,
                    cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stdout.decode() + proc.stderr.decode()
    report = orjson.loads(proc.stdout)
    assert [i["kind"] for i in report["incidents"]] == kinds
    detectors = report["detectors"]
    assert detectors["windows"] == len(kinds)
    by_rule = detectors["by_rule"]
    # every process rule of the rule set is scored, fired or not
    assert set(by_rule) == {r for r in by_rule if r.startswith(("pump-", "net-"))}
    assert len(by_rule) == (6 if scenario.startswith("pump") else 2)
    for doc in [*by_rule.values(), *detectors["by_kind"].values()]:
        assert doc["tp"] + doc["fn"] == len(kinds)
        assert set(doc) >= {"precision", "recall", "f1", "delay_s",
                            "false_alarms_per_1000_device_days"}
    zscore = detectors["by_kind"]["zscore"]
    assert zscore["alarms"] == sum(d["alarms"] for d in by_rule.values())
    if scenario.startswith("pump"):
        # the inlet pressure drop of cavitation is a z-score step: found within a reading
        assert by_rule["pump-inlet-pressure-zscore"]["delays_s"] == {
            "pump-station-faults#s2-cavitation": 300.0}
    assert report["elapsed_s"] < 30
