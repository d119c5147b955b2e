"""The alerts thread hands each committed notification to the outbox worker at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from alerts.cases.store import get_case
from alerts.lifecycle.ops import AlertFilter, list_alerts
from devices.model import Device
from devices.registry import MemoryRegistry
from lifeline.alerting import AlertsRuntime
from lifeline.db import open_database
from lifeline.settings import Settings, WebhookSettings
from rules.model import Finding, FindingState, Severity

pytestmark = pytest.mark.integration


def _runtime(tmp_path: Path) -> AlertsRuntime:
    settings = Settings(run_dir=tmp_path, webhook=WebhookSettings(
        url="http://127.0.0.1:9/hooks", secret=SecretStr("latency-secret-0123456789")))
    registry = MemoryRegistry([Device("gas-1", "gas_alarm", grid="G1", unit="gas-co")])
    return AlertsRuntime(settings, open_database(f"sqlite:///{tmp_path / 'a.db'}"), registry,
                         lambda lines: None)


def _finding(state: FindingState, value: float) -> Finding:
    return Finding("gas-lel-level1", "gas-1", "lel", state, Severity.MAJOR, time.time_ns(), value)


def test_a_committed_notification_wakes_the_outbox_worker_right_away(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    worker = runtime.worker
    assert worker is not None and worker.pending_due() == 0
    # a clear of an alert that does not exist changes nothing: no outbox row, no wake-up
    runtime._apply([_finding(FindingState.RESOLVED, 10.0)])
    assert not worker._wake.is_set()
    # a firing alert commits its alert.firing row: the worker is woken by the finding
    # itself (not by the end of the batch, nor by its poll interval)
    runtime._apply([_finding(FindingState.FIRING, 30.0)])
    assert worker._wake.is_set()
    assert worker.pending_due() >= 1



def test_a_reading_stamped_ahead_of_the_service_clock_is_notified_at_once(
        tmp_path: Path) -> None:
    # a device clock 60 s fast (inside ingest.max_future): its alert.firing and its case are
    # dated on the service clock and due now, not when the service clock reaches the reading
    runtime = _runtime(tmp_path)
    worker = runtime.worker
    assert worker is not None
    before = time.time_ns()
    ahead = Finding("gas-lel-level1", "gas-1", "lel", FindingState.FIRING, Severity.MAJOR,
                    before + 60 * 10**9, 30.0)
    runtime._apply([ahead])
    assert worker.pending_due() >= 1
    (alert,), _ = list_alerts(runtime.pipeline.engine, AlertFilter())
    assert alert.fired_ns == ahead.ts_ns  # the alert keeps the reading's own time
    assert alert.case_id is not None
    with runtime.pipeline.engine.connect() as conn:
        case = get_case(conn, alert.case_id)
    assert before <= case.created_ns <= time.time_ns()  # the case is reported now
