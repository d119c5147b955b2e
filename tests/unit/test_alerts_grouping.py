"""Case grouping keys: grid + type, and water network sensors by DMA across grids and types."""

from __future__ import annotations

import dataclasses

from alerts.cases.book import group_key
from alerts.lifecycle.model import Alert, AlertState
from rules.model import Severity

BASE = Alert(id=1, fingerprint="p-1/r", device_id="p-1", rule_id="r", metric="pressure",
             state=AlertState.FIRING, severity=Severity.MAJOR, value=0.1,
             device_type="water_pressure", grid="G1", district="d", unit="u", first_seen_ns=0,
             changed_ns=0, fired_ns=0, resolved_ns=None, flapping=False, suppressed="",
             notified_state="", notified_severity="", acked_by="", acked_ns=None, ack_note="",
             case_id=None)


def test_water_network_sensors_group_by_dma_across_grids_and_types() -> None:
    flow = dataclasses.replace(BASE, device_id="f-1", device_type="water_flow", grid="G2")
    assert group_key(BASE, "DMA-1") == group_key(flow, "DMA-1") == "dma:DMA-1/water-network"
    assert group_key(BASE, "DMA-1") != group_key(BASE, "DMA-2")


def test_other_types_group_by_grid_and_type_and_fall_back_to_the_device() -> None:
    gas = dataclasses.replace(BASE, device_type="gas_alarm")
    assert group_key(gas, "DMA-1") == "grid:G1/gas_alarm"
    assert group_key(BASE) == "grid:G1/water_pressure"  # no DMA known
    lone = dataclasses.replace(gas, grid="")
    assert group_key(lone) == "device:p-1/gas_alarm"
