"""The fault suite, short: ``lifeline bench soak`` for 75 s with compressed fault windows.

Broker restart, InfluxDB stopped, the database locked, the webhook receiver down then
slow, ``lifeline serve`` SIGKILLed and restarted, a full spool — and at the end nothing
is lost: every acknowledged reading is stored, every excursion gave its alert, case and
webhooks, every delivery arrived exactly once, only the silenced devices went offline.
The PostgreSQL variant (proxy cutting connections) is slow-marked.
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from tests.support import clean_env

pytestmark = pytest.mark.e2e

FAULTS = ["broker_restart", "influxdb_stopped", "database_unavailable", "webhook_down",
          "webhook_slow", "service_sigkill", "spool_full"]


def soak(database: str) -> dict:  # type: ignore[type-arg]
    proc = subprocess.run(
        [sys.executable, "-m", "lifeline", "bench", "soak", "--json", "--minutes", "1.0",
         "--rate", "2000", "--devices", "1000", "--window", "5", "--database", database],
        capture_output=True, env=clean_env(), timeout=400, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-4000:]
    result: dict = orjson.loads(proc.stdout)  # type: ignore[type-arg]
    return result


def check(result: dict) -> None:  # type: ignore[type-arg]
    assert [f["fault"] for f in result["faults"]] == FAULTS
    assert all(f["end_s"] >= f["start_s"] for f in result["faults"])
    readings = result["readings"]
    assert readings["published_acked"] > 50_000
    assert readings["stored"] == readings["published_acked"], readings
    assert readings["lost"] == 0 and readings["dead_lettered"] == 0
    alerts = result["alerts"]
    assert alerts["excursions"] >= 3
    assert alerts["excursions_with_one_firing_and_one_resolved_webhook"] == alerts["excursions"]
    assert alerts["excursions_with_one_firing_and_one_resolved_in_influx"] == \
        alerts["excursions"]
    hooks = result["webhooks"]
    assert hooks["outbox_events"] > 0 and hooks["delivered_unique"] == hooks["outbox_events"]
    assert hooks["undelivered"] == [] and hooks["unknown_ids_received"] == []
    devices = result["devices"]
    assert devices["wrongly_offline"] == 0
    assert devices["intended_offline_marked"] == devices["intended_offline"] > 0
    # the faults did bite: the spool was used and filled, back-pressure held the acks
    counters = result["ingest_counters"]
    assert counters["spooled_lines"] > 0 and counters["spool_replayed_lines"] > 0
    assert result["checks"] and all(result["checks"].values()), result["failing_checks"]
    assert result["ok"] is True


def test_soak_sqlite_zero_loss_under_faults() -> None:
    check(soak("sqlite"))


@pytest.mark.slow
def test_soak_postgresql_zero_loss_under_faults() -> None:
    check(soak("postgresql"))
