"""The alerts thread hands each committed notification to the outbox worker at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import SecretStr

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

