"""`lifeline dlq list|show|replay` as an operator runs it, on a real SQLite database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from ingest.deadletter import DeadLetter, DeadLetterStore, Reason
from lifeline.db import open_database
from tests.support import clean_env

LIFELINE = [sys.executable, "-m", "lifeline"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = clean_env()
    e["LIFELINE_RUN_DIR"] = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    store = DeadLetterStore(open_database(f"sqlite:///{tmp_path / 'run' / 'lifeline.db'}"))
    store.add_many([
        DeadLetter("lifeline/gas-1/telemetry", b"{oops", Reason.NOT_JSON, "bad", 1),
        DeadLetter("lifeline/ghost/telemetry", b'{"values":{"lel":1}}', Reason.UNKNOWN_DEVICE,
                   "device 'ghost' not registered", 2),
        DeadLetter("lifeline/gas-1/telemetry", b"\xff\xfe", Reason.NOT_JSON, "binary", 3),
        DeadLetter("influx:write", b"m x=oops 1", Reason.WRITE_REJECTED, "HTTP 400", 4),
    ])
    return e


def lifeline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LIFELINE, "dlq", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_list_filters_and_pages(env: dict[str, str]) -> None:
    rows = [orjson.loads(x) for x in lifeline(env, "list", "--json").stdout.splitlines()]
    assert [r["id"] for r in rows] == [4, 3, 2, 1]
    not_json = lifeline(env, "list", "--json", "--reason", "not_json").stdout.splitlines()
    assert [orjson.loads(x)["id"] for x in not_json] == [3, 1]
    page = lifeline(env, "list", "--json", "--before", "3", "--limit", "1").stdout.splitlines()
    assert [orjson.loads(x)["id"] for x in page] == [2]
    bad = lifeline(env, "list", "--reason", "nonsense")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert lifeline(env, "list", "--limit", "0").returncode == 2


def test_show_prints_the_whole_payload(env: dict[str, str]) -> None:
    shown = lifeline(env, "show", "2")
    assert shown.returncode == 0
    assert "unknown_device" in shown.stdout and '{"values":{"lel":1}}' in shown.stdout
    binary = lifeline(env, "show", "3")
    assert "\\xff\\xfe" in binary.stdout
    missing = lifeline(env, "show", "99")
    assert missing.returncode == 1 and "no dead letter with id 99" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_replay_marks_letters_for_the_running_service(env: dict[str, str],
                                                      tmp_path: Path) -> None:
    out = lifeline(env, "replay", "--reason", "not_json")
    assert out.returncode == 0 and out.stdout.startswith("2 dead letters marked")
    store = DeadLetterStore(open_database(f"sqlite:///{tmp_path / 'run' / 'lifeline.db'}"))
    taken = store.take_replays()
    assert sorted(r.id for r in taken) == [1, 3]
    # Nothing more to mark; rejected InfluxDB lines are never replayable.
    assert lifeline(env, "replay", "--id", "4").returncode == 1
    assert lifeline(env, "replay", "--reason", "write_rejected").returncode == 2
    assert lifeline(env, "replay").returncode == 2
