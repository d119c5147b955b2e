"""Failover under load (issue #18): two ``lifeline serve`` processes, each with its own run
directory, API port and TCP proxy to one PostgreSQL database, one MQTT client id, HA on
(a 4 s lease; ``lifeline bench failover`` measures the default 8 s). Under ~2,000
readings/s of gateway arrays (QoS 1), a gas alarm drifting through its limit and the
dispatch simulator driving cases through both APIs,
the leader is in turn killed with its run directory deleted, frozen for 30 s, and cut off
from PostgreSQL; each time the other node takes over and the faulted one comes back as a
standby. Nothing may be lost or done twice: every acknowledged reading stored, the
drifting alarm fired once, every webhook delivery id received (duplicates only counted),
case events in order, no case transition applied twice, never two leaders.

The harness is :mod:`bench.failover` (``lifeline bench failover`` runs it with more
takeovers and reports the timings); here one pass of the three faults, asserted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.failover import (
    EX_TEMPFAIL,
    Options,
    create_influx_database,
    drop_influx_database,
    run_failover,
)
from devtools.harness import ManagedService, start_mosquitto
from tests.conftest import _PG_UNAVAILABLE

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ManagedService]:
    """A broker of the test's own (the service's persistent session must not outlive
    the test on the session broker), saving its queues every 30 s like the soak's."""
    service = start_mosquitto(tmp_path, extra_config="autosave_interval 30")
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def influx_db(influxdb: ManagedService) -> Iterator[str]:
    """A fresh database on the session's InfluxDB, dropped afterwards."""
    name = f"failover_{uuid.uuid4().hex[:8]}"
    create_influx_database(influxdb.info.url, name)
    yield name
    drop_influx_database(influxdb.info.url, name)


@pytest.mark.timeout(540)
def test_failover_kill_freeze_cutoff_under_load_loses_nothing(
        tmp_path: Path, broker: ManagedService, influxdb: ManagedService,
        influx_db: str) -> None:
    if _PG_UNAVAILABLE:
        pytest.skip(_PG_UNAVAILABLE)
    # a 4 s lease (the benchmark measures the defaults): the invariants do not depend on it
    options = Options(["kill", "freeze", "cutoff"], rate=2_000.0, freeze_s=30.0,
                      lease="4s", renew_interval="1s", poll_interval="250ms",
                      warmup_s=10.0, settle_s=1.0)
    result = run_failover(options, tmp_path / "run", broker.info.port, influxdb.info.url,
                          influx_db)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())  # shown on failure
    _check(result)


def _check(result: dict[str, Any]) -> None:
    takeovers = result["takeovers"]
    assert [t["fault"] for t in takeovers] == ["kill", "freeze", "cutoff"]
    # faults go to the current leader, which alternates
    assert [t["node"] for t in takeovers] == ["a", "b", "a"], takeovers
    for t in takeovers:
        assert t["takeover_s"] is not None, t  # the other node reported "leader"
        assert t["stored_again_s"] is not None and t["stored_again_s"] >= t["takeover_s"], t
        assert t["restarted_as"] == "standby", t
        assert t["new_leader_other_role_samples"] == 0, t  # the old leader did not fight
        assert t["acked_before_fault_stored"], t
    kill, freeze, cutoff = takeovers
    assert kill["exit_code"] == -9
    # a resumed or cut-off leader steps down by itself: EX_TEMPFAIL, never a fight
    assert freeze["exit_code"] == EX_TEMPFAIL, freeze
    assert cutoff["exit_code"] == EX_TEMPFAIL, cutoff
    assert freeze["takeover_s"] < 30.0  # taken over while the old leader was still frozen
    assert result["two_leader_samples"] == 0

    readings = result["readings"]
    assert readings["published_acked"] > 100_000, result["load"]
    assert readings["stored"] == readings["published_acked"], readings
    assert readings["unacked_by_broker_at_end"] == 0 and readings["dead_lettered"] == 0

    alerts = result["alerts"]
    assert alerts["drift_firing_events"] == 1, alerts
    assert alerts["drift_firing_received"] == 1, alerts
    assert alerts["drift_firing_in_influx"] == 1, alerts
    assert alerts["drift_alert_rows"] == ["firing"], alerts
    assert alerts["takeover_alert_firings"] == 3, alerts  # service:ha_takeover, one each
    assert alerts["excursions_complete"] >= 3, alerts
    assert alerts["excursions_one_firing_one_resolved"] == alerts["excursions_complete"]

    hooks = result["webhooks"]
    assert hooks["outbox_events"] > 0 and hooks["received_unique"] == hooks["outbox_events"]
    assert hooks["undelivered"] == [] and hooks["unknown_ids_received"] == [], hooks
    assert hooks["bad_signatures"] == 0
    assert hooks["order_keys"] > 0 and hooks["order_keys_out_of_order"] == [], hooks

    cases = result["cases"]
    assert cases["callback_transitions"] > 0, result["dispatch"]
    assert cases["broken_history_chains"] == [], cases
    assert cases["transitions_applied_twice"] == [], cases

    assert result["exit_codes_at_end"] == {"a": 0, "b": 0}
    assert result["checks"] and all(result["checks"].values()), result["failing_checks"]
    assert result["ok"] is True
