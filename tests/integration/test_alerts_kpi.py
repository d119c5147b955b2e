"""KPIs of a scripted scenario, checked against values computed by hand."""

from __future__ import annotations

import pytest

from alerts.cases.kpi import KpiScope, compute, kpi_lines
from alerts.cases.model import CaseConfig, StageDeadlines
from alerts.cases.workflow import Action
from alerts.lifecycle.model import AlertConfig
from alerts.lifecycle.ops import AlertFilter, list_alerts
from alerts.lifecycle.pipeline import AlertPipeline
from devices.model import Device
from devices.registry import MemoryRegistry
from lifeline.db import open_database
from rules.model import Finding, FindingState, Severity
from tests.support import ReadingClock

pytestmark = pytest.mark.integration
S = 1_000_000_000
T0 = 1_750_000_000 * S


def test_kpis_match_hand_computed_values(db_url: str) -> None:
    devices = [Device("a", "gas_alarm", grid="G1"), Device("b", "gas_alarm", grid="G2"),
               Device("c", "water_pressure", grid="W1"), Device("d", "water_pressure", grid="W2"),
               Device("e", "water_pressure", grid="W3")]
    cfg = CaseConfig(auto_register=Severity.MAJOR, auto_verify=False,
                     deadlines={"critical": StageDeadlines(handle_ns=3600 * S),
                                "major": StageDeadlines(handle_ns=3600 * S)})
    clock = ReadingClock(T0)
    p = AlertPipeline(open_database(db_url), MemoryRegistry(devices), AlertConfig(), cfg,
                      clock=clock)
    clock.follow(p)
    for dev, sev, t in [("a", Severity.CRITICAL, 0), ("b", Severity.CRITICAL, 100),
                        ("c", Severity.MAJOR, 200), ("d", Severity.MINOR, 300),
                        ("e", Severity.MINOR, 400)]:
        p.process([Finding("r", dev, "m", FindingState.FIRING, sev, T0 + t * S, 1.0)])
    case = {a.device_id: a.case_id for a in list_alerts(p.engine, AlertFilter())[0]}
    script = [  # (second, device, action)
        (120, "a", Action.ACCEPT), (400, "b", Action.ACCEPT), (500, "c", Action.ACCEPT),
        (500, "e", Action.CANCEL), (900, "d", Action.REGISTER), (1200, "c", Action.HANDLED),
        (1300, "c", Action.REWORK), (1400, "c", Action.START), (1800, "a", Action.HANDLED),
        (1900, "a", Action.VERIFY), (2000, "c", Action.HANDLED), (2100, "c", Action.VERIFY),
        (4000, "b", Action.HANDLED), (4100, "b", Action.VERIFY),
    ]
    for t, dev, action in script:
        with p.engine.begin() as conn:
            case_id = case[dev]
            assert case_id is not None
            p.cases.apply(conn, case_id, action, "test", T0 + t * S)

    (overall,) = compute(p.engine, T0, T0 + 3600 * S)
    assert (overall.cases, overall.registered, overall.handled, overall.handled_on_time,
            overall.closed, overall.reworked) == (4, 4, 3, 2, 3, 1)
    assert overall.disposal_rate == pytest.approx(3 / 4)   # 处置率
    # 按期处置率 = handled on time / should be handled (registered): b was late, d unhandled
    assert overall.on_time_rate == pytest.approx(2 / 4)
    assert overall.close_rate == pytest.approx(3 / 4)      # 结案率
    assert overall.rework_rate == pytest.approx(1 / 3)     # 返工率
    assert overall.mean_dispatch_s == pytest.approx((120 + 300 + 300) / 3)
    assert overall.mean_handle_s == pytest.approx((1800 + 3900 + 1800) / 3)
    assert overall.mean_close_s == pytest.approx((1900 + 4000 + 1900) / 3)

    by_type = {k.key: k for k in compute(p.engine, T0, T0 + 3600 * S, KpiScope.TYPE)}
    gas, water = by_type["gas_alarm"], by_type["water_pressure"]
    assert (gas.disposal_rate, gas.on_time_rate, gas.close_rate, gas.rework_rate) == (
        1.0, 0.5, 1.0, 0.0)
    assert (water.disposal_rate, water.on_time_rate, water.close_rate, water.rework_rate) == (
        0.5, 0.5, 0.5, 1.0)  # c handled on time, d not handled: 1 of 2 on time
    by_grid = {k.key: k for k in compute(p.engine, T0, T0 + 3600 * S, KpiScope.GRID)}
    assert set(by_grid) == {"G1", "G2", "W1", "W2"}  # the cancelled W3 case is not counted
    # W2 (d): registered, nothing handled: 0 of 1 on time; no 返工率 without a handled case
    assert by_grid["W2"].handled == 0 and by_grid["W2"].on_time_rate == 0.0
    assert by_grid["W2"].rework_rate is None
    by_unit = compute(p.engine, T0, T0 + 3600 * S, KpiScope.UNIT)
    assert [(k.key, k.registered) for k in by_unit] == [("城市运行管理中心", 4)]
    # a period that holds only the first case
    (first,) = compute(p.engine, T0, T0 + 50 * S)
    assert (first.cases, first.mean_close_s) == (1, pytest.approx(1900))
    lines = kpi_lines(list(by_grid.values()), T0)
    assert lines[0].startswith("lifeline_kpi,scope=grid,key=G1 cases=1i,registered=1i")
    assert "disposal_rate=1.0" in lines[0] and "mean_close_s=1900.0" in lines[0]
