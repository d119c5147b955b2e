"""The case KPIs of scripted case histories, worked out by hand, and the same figures from
every place that shows them: ``alerts.cases.kpi``, ``/api/v1/kpi``, the ``lifeline_kpi`` points
the overview dashboard's KPI panels query (their own queries, expanded as Grafana does, on
a real InfluxDB) and the shift report's KPI figures (:func:`dashboards.report.collect`);
and the open-case and active-alert counts of the dashboards against the database after a
full case loop whose automatic steps share one instant."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from alerts.cases.kpi import KpiScope, compute, kpi_window, period_lines
from alerts.cases.model import OPEN_CASE_STATES, CaseConfig, Route, StageDeadlines
from alerts.cases.store import case_history
from alerts.cases.workflow import Action
from alerts.lifecycle.model import AlertConfig
from alerts.lifecycle.ops import AlertFilter, list_alerts
from alerts.lifecycle.pipeline import AlertPipeline
from dashboards.definitions import KPIS, all_boards
from dashboards.lines import device_info_lines
from dashboards.model import GrafanaTarget
from dashboards.query import InfluxQLClient
from dashboards.render import setup_sdk, to_json
from dashboards.report import collect, influx_snapshot
from dashboards.templating import TimeRange, interpolate, resolve
from devices.model import Device
from devices.registry import MemoryRegistry
from devtools.harness import ManagedService
from lifeline.app import create_app
from lifeline.auth import new_token, token_digest
from lifeline.db import open_database
from lifeline.report_state import database_kpis
from lifeline.settings import load_settings
from rules.model import Finding, FindingState, Severity
from tests.support import ReadingClock

pytestmark = pytest.mark.integration
S = 1_000_000_000
DAY = 86_400
# Period 1 = [D, D + 1 day), period 2 = [D + 1 day, D + 2 days): 2026-03-01 and -02, Beijing
# time (00:00+08:00 = 16:00 UTC the day before).
D = 1_772_294_400
assert time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(D)) == "2026-02-28T16:00:00"
P1 = ("2026-03-01T00:00:00+08:00", "2026-03-02T00:00:00+08:00")
P2 = ("2026-03-02T00:00:00+08:00", "2026-03-03T00:00:00+08:00")
UNIT_GAS, UNIT_WATER, UNIT_HEAT, UNIT_CITY = "燃气公司", "水务集团", "热力公司", "城市运行管理中心"

# -- the case histories ----------------------------------------------------------------------
# Deadlines for every severity: dispatch (accepted) 600 s, handle 3600 s after 立案; a
# rework sets a new handle deadline 3600 s after it. Major and critical cases are
# registered (and dispatched) automatically at report; minor ones wait for the duty officer.
# Routing: grid G1 → 燃气公司, G2 → 水务集团, G3 → the default unit 城市运行管理中心.
# Times are seconds after D.


@dataclass(frozen=True)
class History:
    """One scripted case: who reports it when, at what severity."""

    name: str
    grid: str
    device_type: str
    severity: Severity
    reported: int


HISTORIES = [
    History("c1 normal close", "G1", "gas_alarm", Severity.CRITICAL, 0),
    History("c2 late handling (督办)", "G1", "gas_pipeline", Severity.CRITICAL, 100),
    History("c3 rework then close", "G2", "water_pressure", Severity.MAJOR, 200),
    History("c4 late, escalated, reworked, in progress", "G2", "water_quality",
            Severity.MAJOR, 300),
    History("c5 returned to the duty officer, re-dispatched", "G1", "heat_pipe",
            Severity.CRITICAL, 400),
    History("c6 cancelled before registration", "G3", "drain_level", Severity.MINOR, 500),
    History("c7 registered by the duty officer", "G3", "manhole_cover", Severity.MINOR, 600),
    History("c8 never accepted (dispatch 督办)", "G3", "water_flow", Severity.MAJOR, 700),
    History("c9 handled, awaiting verification", "G2", "drain_level", Severity.CRITICAL, 900),
    History("c10 reworked, handled late, closed", "G2", "gas_alarm", Severity.MAJOR, 1000),
    History("c11 reported in P1, closed in P2", "G3", "gas_alarm", Severity.MAJOR,
            DAY - 1800),
    History("c13 reported in P1, registered in P2", "G2", "heat_pipe", Severity.MINOR,
            DAY - 400),
    History("c12 normal close in P2", "G1", "water_quality", Severity.CRITICAL, DAY + 1000),
    History("c14 cancelled after registration (P2)", "G3", "gas_pipeline",
            Severity.CRITICAL, DAY + 3600),
]

# (second, case, action, unit) in time order; "tick" runs the case clocks (escalation).
SCRIPT: list[tuple[int, str, str, str]] = [
    (60, "c1", "accept", ""), (400, "c4", "accept", ""), (500, "c3", "accept", ""),
    (600, "c5", "return", ""), (700, "c2", "accept", ""),
    (800, "c5", "dispatch", UNIT_HEAT),  # the duty officer re-dispatches to another unit
    (900, "c5", "accept", ""), (900, "c6", "cancel", ""),
    (1000, "c3", "handled", ""), (1000, "c9", "accept", ""), (1100, "c10", "accept", ""),
    (1200, "c1", "handled", ""),
    (1300, "c3", "rework", ""),  # new handle deadline 4900
    (1400, "", "tick", ""),  # c8: dispatch deadline 1300 missed, not accepted → overdue
    (1400, "c3", "accept", ""), (1500, "c1", "verify", ""),  # verify → closed, one instant
    (1500, "c7", "register", ""), (1500, "c10", "handled", ""), (1600, "c7", "accept", ""),
    (1700, "c10", "rework", ""),  # new handle deadline 5300
    (1800, "c10", "accept", ""), (2000, "c3", "handled", ""), (2200, "c3", "verify", ""),
    (2400, "c5", "handled", ""), (2500, "c5", "verify", ""), (2500, "c9", "handled", ""),
    (3000, "c7", "handled", ""), (3100, "c7", "verify", ""),
    (3800, "", "tick", ""),  # c2: handle deadline 3700 missed → overdue
    (4000, "", "tick", ""),  # c4: handle deadline 3900 missed → overdue
    (4000, "c2", "handled", ""),  # late
    (4100, "c4", "handled", ""),  # late ...
    (4200, "c4", "rework", ""),  # ... and sent back: no longer handled
    (4300, "c2", "verify", ""), (4300, "c4", "start", ""),
    (5400, "", "tick", ""),  # c10: rework deadline 5300 missed → overdue
    (5500, "c10", "handled", ""), (5600, "c10", "verify", ""),
    (DAY - 1700, "c11", "accept", ""), (DAY + 600, "c11", "handled", ""),
    (DAY + 600, "c13", "register", ""), (DAY + 700, "c11", "verify", ""),
    (DAY + 700, "c13", "accept", ""), (DAY + 1100, "c12", "accept", ""),
    (DAY + 1600, "c12", "handled", ""), (DAY + 1700, "c12", "verify", ""),
    (DAY + 3700, "c14", "cancel", ""),
]

# Expected KPIs, worked out by hand from the histories above. Columns: cases, registered,
# handled, handled_on_time, closed, reworked, overdue, disposal_rate, on_time_rate,
# close_rate, rework_rate, mean / p90 time to dispatch, handle, close (s).
# Cohort: the cases *reported* in the period, cancelled ones (c6, c14) left out.
P1_ALL = (
    # c1 c2 c3 c4 c5 c7 c8 c9 c10 c11 c13 — all 11 registered (c13 only in P2: still P1's)
    11, 11,
    # handled (state handled/verified/closed): c1 c2 c3 c5 c7 c9 c10 c11 = 8; c4 (handled
    # late, then reworked, now in progress), c8 (never accepted), c13 (in progress) are not
    8,
    # on time, judged on the standing handling: c1 c3 (2000 ≤ rework deadline 4900) c5 c7 c9
    # c11 = 6; c2 (4000 > 3700) and c10 (5500 > rework deadline 5300) late
    6,
    # closed: c1 c2 c3 c5 c7 c10 c11 = 7; reworked and handled: c3 c10 = 2 (c4: not
    # handled); overdue (escalated): c2 c4 c8 c10 = 4
    7, 2, 4,
    8 / 11, 6 / 11, 7 / 11, 2 / 8,
    # report → accepted: c1 60, c2 600, c3 300, c4 100, c5 500, c7 1000, c9 100, c10 100,
    # c11 100, c13 1100: sum 3960 / 10; sorted, the 9th (⌈0.9·10⌉) of 10 is 1000
    396.0, 1000.0,
    # report → standing handling: c1 1200, c2 3900, c3 1800, c5 2000, c7 2400, c9 1600,
    # c10 4500, c11 2400: sum 19800 / 8; p90: the 8th (⌈7.2⌉) of 8 = 4500
    2475.0, 4500.0,
    # report → closed: c1 1500, c2 4200, c3 2000, c5 2100, c7 2500, c10 4600, c11 2500:
    # sum 19400 / 7; p90: the 7th (⌈6.3⌉) of 7 = 4600
    19400 / 7, 4600.0,
)
# P2: c12 alone (c14 cancelled; c11 and c13 belong to P1, where they were reported):
# accepted after 100 s, handled after 600 s (deadline 3600), closed after 700 s
P2_ALL = (1, 1, 1, 1, 1, 0, 0, 1.0, 1.0, 1.0, 0.0, 100.0, 100.0, 600.0, 600.0, 700.0, 700.0)
FIELDS = ("cases", "registered", "handled", "handled_on_time", "closed", "reworked",
          "overdue", "disposal_rate", "on_time_rate", "close_rate", "rework_rate",
          "mean_dispatch_s", "p90_dispatch_s", "mean_handle_s", "p90_handle_s",
          "mean_close_s", "p90_close_s")
COUNTS = FIELDS[:7]
RATES = ("disposal_rate", "on_time_rate", "close_rate", "rework_rate")
# (period, scope, key): (registered, handled, handled_on_time, closed, reworked, disposal,
# on time, close, rework rate)
GROUPS: dict[tuple[int, str, str], tuple[Any, ...]] = {
    # G1: c1 c2 c5; all handled and closed, c2 late
    (1, "grid", "G1"): (3, 3, 2, 3, 0, 1.0, 2 / 3, 1.0, 0.0),
    # G2: c3 c4 c9 c10 c13; handled c3 c9 c10, on time c3 c9, closed c3 c10, reworked c3 c10
    (1, "grid", "G2"): (5, 3, 2, 2, 2, 3 / 5, 2 / 5, 2 / 5, 2 / 3),
    # G3: c7 c8 c11 (c6 cancelled); handled, on time and closed c7 c11
    (1, "grid", "G3"): (3, 2, 2, 2, 0, 2 / 3, 2 / 3, 2 / 3, 0.0),
    # 燃气公司 keeps c1 c2; c5 went to 热力公司 when re-dispatched
    (1, "unit", UNIT_GAS): (2, 2, 1, 2, 0, 1.0, 0.5, 1.0, 0.0),
    (1, "unit", UNIT_HEAT): (1, 1, 1, 1, 0, 1.0, 1.0, 1.0, 0.0),
    (1, "unit", UNIT_WATER): (5, 3, 2, 2, 2, 3 / 5, 2 / 5, 2 / 5, 2 / 3),
    (1, "unit", UNIT_CITY): (3, 2, 2, 2, 0, 2 / 3, 2 / 3, 2 / 3, 0.0),
    # gas_alarm: c1 c10 c11; all closed, c10 late and reworked
    (1, "type", "gas_alarm"): (3, 3, 2, 3, 1, 1.0, 2 / 3, 1.0, 1 / 3),
    # water_quality in P1: c4 only — handled late then reworked: nothing handled
    (1, "type", "water_quality"): (1, 0, 0, 0, 0, 0.0, 0.0, 0.0, None),
    (2, "grid", "G1"): (1, 1, 1, 1, 0, 1.0, 1.0, 1.0, 0.0),
}
GROUP_FIELDS = ("registered", "handled", "handled_on_time", "closed", "reworked", *RATES)


def _approx(value: Any) -> Any:
    return pytest.approx(value) if isinstance(value, float) else value


class Influx:
    """A fresh database on the harness InfluxDB."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.db = f"kpi_{uuid.uuid4().hex[:8]}"
        httpx.post(f"{url}/query", params={"q": f'CREATE DATABASE "{self.db}"'}
                   ).raise_for_status()

    def write(self, lines: list[str]) -> None:
        """Write lines (ns precision), as the service's writer does."""
        if lines:
            httpx.post(f"{self.url}/write", params={"db": self.db, "precision": "ns"},
                       content="\n".join(lines).encode()).raise_for_status()


def _api(tmp_path: Path, engine: Any) -> tuple[TestClient, dict[str, str]]:
    token = new_token()
    settings = load_settings(None, run_dir=tmp_path, api={"tokens": [
        {"name": "duty", "role": "viewer", "sha256": token_digest(token)}]},
        cases={"kpi_period": "24h"})
    return TestClient(create_app(settings, engine)), {"Authorization": f"Bearer {token}"}


def _panel_value(client: InfluxQLClient, title: str, tr: TimeRange) -> float | None:
    """Run the overview KPI panel ``title``'s own query and read it as the stat does."""
    setup_sdk()
    board = next(b for b in all_boards(GrafanaTarget()) if b.uid == "lifeline-overview")
    (query,) = [q for q in board.queries if q.panel == title]
    series = client.query(interpolate(query.query, resolve(to_json(board), client, tr), tr))
    (s,) = series
    (row,) = s.values  # one point: the latest in range
    name = query.columns[0]
    value = row[s.columns.index(name)]
    return None if value is None else float(value)


def _run_histories(db_url: str, influx: Influx) -> tuple[AlertPipeline, dict[str, int]]:
    devices = [Device(f"d-{h.name.split()[0]}", h.device_type, grid=h.grid, district="D1")
               for h in HISTORIES]
    dl = StageDeadlines(dispatch_ns=600 * S, handle_ns=3600 * S)
    cfg = CaseConfig(auto_register=Severity.MAJOR, min_severity=Severity.MINOR,
                     auto_verify=False, auto_close=True, redispatch_on_return=False,
                     routes=(Route("G1", "*", UNIT_GAS), Route("G2", "*", UNIT_WATER)),
                     deadlines=dict.fromkeys(("critical", "major", "minor"), dl))
    clock = ReadingClock(D * S)
    p = AlertPipeline(open_database(db_url), MemoryRegistry(devices), AlertConfig(), cfg,
                      clock=clock, write_lines=influx.write)
    clock.follow(p)
    influx.write(device_info_lines(devices, D * S))
    events: list[tuple[int, int, str, str, str]] = [
        (h.reported, 0, h.name.split()[0], "report", "") for h in HISTORIES]
    events += [(t, 1 + i, c, a, u) for i, (t, c, a, u) in enumerate(SCRIPT)]
    case: dict[str, int] = {}
    for t, _, name, action, unit in sorted(events):
        now = (D + t) * S
        if action == "report":
            h = next(h for h in HISTORIES if h.name.split()[0] == name)
            p.process([Finding("r", f"d-{name}", "m", FindingState.FIRING, h.severity, now,
                               1.0)])
            (alert,) = list_alerts(p.engine, AlertFilter(device=f"d-{name}"))[0]
            assert alert.case_id is not None, name
            case[name] = alert.case_id
        elif action == "tick":
            p.tick(now)
        else:
            with p.engine.begin() as conn:
                p.cases.apply(conn, case[name], Action(action), "test", now, unit=unit or None)
            p._flush_lines()
    return p, case


def test_kpis_of_scripted_histories_agree_everywhere(
        db_url: str, influxdb: ManagedService, tmp_path: Path) -> None:
    influx = Influx(influxdb.info.url)
    p, _ = _run_histories(db_url, influx)
    periods = {1: (D * S, (D + DAY) * S), 2: ((D + DAY) * S, (D + 2 * DAY) * S)}
    expected = {1: P1_ALL, 2: P2_ALL}

    # 1. alerts.cases.kpi
    for n, (start, end) in periods.items():
        (k,) = compute(p.engine, start, end)
        assert tuple(getattr(k, f) for f in FIELDS) == tuple(map(_approx, expected[n])), n
    for (n, scope, key), want in GROUPS.items():
        got = {g.key: g for g in compute(p.engine, *periods[n], KpiScope(scope))}
        assert tuple(getattr(got[key], f) for f in GROUP_FIELDS) == tuple(map(_approx, want)), (
            n, scope, key)

    # 2. /api/v1/kpi
    client, auth = _api(tmp_path, p.engine)
    for n, (start_s, end_s) in ((1, P1), (2, P2)):
        r = client.get("/api/v1/kpi", params={"start": start_s, "end": end_s}, headers=auth)
        assert r.status_code == 200, r.text
        (k,) = r.json()["data"]
        assert tuple(k[f] for f in FIELDS) == tuple(map(_approx, expected[n])), n
    for (n, scope, key), want in GROUPS.items():
        start_s, end_s = P1 if n == 1 else P2
        data = client.get("/api/v1/kpi", params={"start": start_s, "end": end_s, "by": scope},
                          headers=auth).json()["data"]
        got = next(k for k in data if k["key"] == key)
        assert tuple(got[f] for f in GROUP_FIELDS) == tuple(map(_approx, want)), (n, scope, key)

    # 3. lifeline_kpi as the service writes it, one point at the last instant of each
    # period (covering exactly that period), read by the overview's own KPI panel queries
    for start, end in periods.values():
        assert kpi_window(end - 1, DAY * S) == (start, end)
        influx.write(period_lines(p.engine, end - 1, DAY * S))
    ms = {n: TimeRange(start // 1_000_000, end // 1_000_000) for n, (start, end)
          in periods.items()}
    with InfluxQLClient(influx.url, influx.db) as iq:
        for n in (1, 2):
            for name, title in KPIS:
                want = expected[n][FIELDS.index(name)]
                assert _panel_value(iq, title, ms[n]) == pytest.approx(want), (n, name)
        counts = iq.query('SELECT "cases", "registered", "handled", "handled_on_time", '
                          '"closed", "reworked", "overdue" FROM "lifeline_kpi" '
                          "WHERE \"scope\" = 'all'")
        assert [tuple(row[1:]) for row in counts[0].values] == [
            expected[1][:7], expected[2][:7]]
        grid = iq.query('SELECT "on_time_rate" FROM "lifeline_kpi" WHERE "scope" = \'grid\' '
                        f"AND \"key\" = 'G2' AND time < {periods[1][1]}")
        assert grid[0].values[0][1] == pytest.approx(2 / 5)

        # 4. the shift report's KPI figures, this period (P2) against the one before (P1):
        # from lifeline_kpi (without a database) and from the database
        report = collect(iq, end_ms=periods[2][1] // 1_000_000, period_ms=DAY * 1000)
    want = {name: (pytest.approx(expected[2][FIELDS.index(name)]),
                   pytest.approx(expected[1][FIELDS.index(name)])) for name, _ in KPIS}
    assert {k.name: (k.current, k.previous) for k in report.kpis} == want
    from_db = database_kpis(p.engine, periods[2][1] // 1_000_000, DAY * 1000)
    assert {k.name: (k.current, k.previous) for k in from_db} == want


def test_a_kpi_without_a_denominator_is_empty_on_the_dashboard(
        db_url: str, influxdb: ManagedService) -> None:
    """A later point that leaves a rate out (nothing handled yet) must not show an older
    point's rate."""
    influx = Influx(influxdb.info.url)
    p, _ = _run_histories(db_url, influx)
    # c1 … c10 (reported at 0 … 1000 s): 7 handled, 2 of them reworked
    influx.write(period_lines(p.engine, (D + 1000) * S, 1001 * S))
    (k,) = compute(p.engine, *kpi_window((D + 1000) * S, 1001 * S))
    assert k.rework_rate == pytest.approx(2 / 7)
    # later, a period whose only case (c13) has not been handled: no 返工率
    later = (D + DAY - 400) * S
    (k,) = compute(p.engine, *kpi_window(later, S))
    assert (k.registered, k.handled, k.rework_rate) == (1, 0, None)
    influx.write(period_lines(p.engine, later, S))
    tr = TimeRange(D * 1000, (D + DAY) * 1000)
    with InfluxQLClient(influx.url, influx.db) as iq:
        assert _panel_value(iq, "返工率 rework rate", tr) is None
        assert _panel_value(iq, "处置率 disposal rate", tr) == 0.0


def test_kpi_route_defaults_to_the_kpi_period(db_url: str, tmp_path: Path) -> None:
    """Without start and end: the last ``cases.kpi_period`` (24 h), the period of the latest
    ``lifeline_kpi`` point."""
    now = time.time_ns()
    devices = [Device("old", "gas_alarm", grid="G1"), Device("new", "gas_alarm", grid="G2")]
    clock = ReadingClock(now - 26 * 3600 * S)
    p = AlertPipeline(open_database(db_url), MemoryRegistry(devices), AlertConfig(),
                      CaseConfig(), clock=clock)
    clock.follow(p)
    for dev, ago in (("old", 25 * 3600), ("new", 3600)):
        p.process([Finding("r", dev, "m", FindingState.FIRING, Severity.CRITICAL,
                           now - ago * S, 1.0)])
    client, auth = _api(tmp_path, p.engine)
    r = client.get("/api/v1/kpi", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    (k,) = body["data"]
    assert (k["cases"], k["registered"], k["handled"]) == (1, 1, 0)  # "old" is 25 h ago
    assert body["start"] < body["end"]
    r = client.get("/api/v1/kpi", params={"end": body["end"]}, headers=auth)
    assert r.json()["data"][0]["cases"] == 1
    assert client.get("/api/v1/kpi", params={"end": "2026-01-01T00:00:00"},
                      headers=auth).status_code == 422


# -- same-instant writes ---------------------------------------------------------------------

def _open_on_dashboard(iq: InfluxQLClient, tr: TimeRange) -> dict[int, str]:
    """Open cases as the overview's "Open cases by state" panel shows them: its own query,
    the last row per case, closed and cancelled left out (its transformations)."""
    setup_sdk()
    board = next(b for b in all_boards(GrafanaTarget()) if b.uid == "lifeline-overview")
    (query,) = [q for q in board.queries if q.panel == "Open cases by state"]
    rows = [r for s in iq.query(interpolate(query.query, resolve(to_json(board), iq, tr), tr))
            for r in s.records()]
    last: dict[int, dict[str, Any]] = {}
    for r in rows:  # in time order, as InfluxDB returns them
        last[int(r["case_id"])] = r
    return {c: str(r["state"]) for c, r in last.items()
            if r["state"] not in ("closed", "cancelled")}


def test_open_cases_on_the_dashboards_match_the_api_after_a_full_loop(
        db_url: str, influxdb: ManagedService, tmp_path: Path) -> None:
    """Cases reported (registered and dispatched at the same instant), handled, verified
    automatically and closed at the same instant: the dashboards count the open ones."""
    influx = Influx(influxdb.info.url)
    t0 = (time.time_ns() // S - 3600) * S
    devices = [Device(f"g-{i}", "gas_alarm", grid=f"G{i}", district="D1") for i in range(13)]
    cfg = CaseConfig(verify_after_ns=60 * S, auto_verify=True, auto_close=True)
    clock = ReadingClock(t0)
    p = AlertPipeline(open_database(db_url), MemoryRegistry(devices),
                      AlertConfig(resolve_delay_ns=0), cfg, clock=clock, write_lines=influx.write)
    clock.follow(p)
    influx.write(device_info_lines(devices, t0))
    for i, d in enumerate(devices):
        p.process([Finding("r", d.id, "m", FindingState.FIRING, Severity.CRITICAL,
                           t0 + i * S, 60.0)])
    case = {a.device_id: a.case_id for a in list_alerts(p.engine, AlertFilter())[0]}
    for i, d in enumerate(devices[:11]):  # 11 handled; g-11 accepted only, g-12 untouched
        with p.engine.begin() as conn:
            p.cases.apply(conn, case[d.id] or 0, Action.ACCEPT, "unit", t0 + (100 + i) * S)
            p.cases.apply(conn, case[d.id] or 0, Action.HANDLED, "unit", t0 + (200 + i) * S)
        p._flush_lines()
        p.process([Finding("r", d.id, "m", FindingState.RESOLVED, Severity.CRITICAL,
                           t0 + (200 + i) * S, 1.0)])
    with p.engine.begin() as conn:
        p.cases.apply(conn, case["g-11"] or 0, Action.ACCEPT, "unit", t0 + 300 * S)
    p._flush_lines()
    p.tick(t0 + 600 * S)  # verify → close, one instant, for the 11 handled cases

    client, auth = _api(tmp_path, p.engine)
    api_open = {c["id"]: c["state"] for s in sorted(OPEN_CASE_STATES)
                for c in client.get("/api/v1/cases", params={"state": s.value},
                                    headers=auth).json()["data"]}
    assert api_open == {case["g-11"]: "in_progress", case["g-12"]: "dispatched"}
    tr = TimeRange(t0 // 1_000_000 - 60_000, t0 // 1_000_000 + 3_600_000)
    with InfluxQLClient(influx.url, influx.db) as iq:
        assert _open_on_dashboard(iq, tr) == api_open
        snap = influx_snapshot(iq, end_ms=tr.to_ms)  # the report's open cases
        # a view of the last 10 minutes, long after the open cases last changed
        late = TimeRange(tr.to_ms + 2 * 86_400_000 - 600_000, tr.to_ms + 2 * 86_400_000)
        assert _open_on_dashboard(iq, late) == api_open
    assert {c.case_id: c.state for c in snap.open_cases} == api_open


def test_alert_transitions_keep_their_order_in_influxdb(
        db_url: str, influxdb: ManagedService) -> None:
    """Fired and resolved at one instant: both transitions are kept, the last one is
    resolved; resolved by a reading older than the tick that promoted the alert: the last
    point is still the resolution."""
    influx = Influx(influxdb.info.url)
    t0 = (time.time_ns() // S - 3600) * S
    devices = [Device("same", "gas_alarm", grid="G1", district="D1"),
               Device("slow", "gas_alarm", grid="G2", district="D1")]
    influx.write(device_info_lines(devices, t0))
    p = AlertPipeline(open_database(db_url), MemoryRegistry(devices), AlertConfig(),
                      CaseConfig(), clock=lambda: t0, write_lines=influx.write)
    p.process([Finding("r", "same", "m", FindingState.FIRING, Severity.MAJOR, t0, 60.0),
               Finding("r", "same", "m", FindingState.RESOLVED, Severity.MAJOR, t0, 1.0)])
    slow = AlertPipeline(p.engine, p.registry, AlertConfig(pending_ns=10 * S), CaseConfig(),
                         clock=lambda: t0, write_lines=influx.write)
    slow.process([Finding("r", "slow", "m", FindingState.FIRING, Severity.MAJOR, t0, 60.0)])
    slow.tick(t0 + 20 * S)  # pending → firing at the tick
    # a reading taken before the tick, processed after it, clears the alert
    slow.process([Finding("r", "slow", "m", FindingState.RESOLVED, Severity.MAJOR,
                          t0 + 15 * S, 1.0)])
    db_state = {a.device_id: (a.state.value, a.fired_ns is not None)
                for a in list_alerts(p.engine, AlertFilter())[0]}
    assert db_state == {"same": ("resolved", True), "slow": ("resolved", True)}
    tr = TimeRange(t0 // 1_000_000 - 60_000, t0 // 1_000_000 + 60_000)
    with InfluxQLClient(influx.url, influx.db) as iq:
        report = collect(iq, end_ms=tr.to_ms, period_ms=tr.to_ms - tr.from_ms)
        snap = influx_snapshot(iq, end_ms=tr.to_ms)
        fired = iq.query('SELECT count("firing") FROM "lifeline_alert" WHERE "firing" = 1 '
                         'GROUP BY "device"')
    assert snap.firing == []  # the report's active alerts: none, as in the database
    assert {s.tag("device"): s.values[0][1] for s in fired} == {"same": 1, "slow": 1}
    assert dict(report.noisy_rules) == {"r": 2}


def test_cases_changing_at_one_instant_with_the_same_tags_keep_their_own_points(
        db_url: str, influxdb: ManagedService) -> None:
    """Two devices without a grid (one case each), same type, unit and severity, fire at
    one instant: their cases' points share every tag and would share the time; both must
    be in InfluxDB, with every state change of each."""
    influx = Influx(influxdb.info.url)
    t0 = (time.time_ns() // S - 3600) * S
    devices = [Device(f"nogrid-{i}", "gas_alarm") for i in range(3)]
    p = AlertPipeline(open_database(db_url), MemoryRegistry(devices), AlertConfig(),
                      CaseConfig(), clock=lambda: t0, write_lines=influx.write)
    p.process([Finding("r", d.id, "m", FindingState.FIRING, Severity.CRITICAL, t0, 60.0)
               for d in devices])
    case_ids = {a.case_id for a in list_alerts(p.engine, AlertFilter())[0]}
    assert len(case_ids) == 3
    with p.engine.connect() as conn:
        lines = conn.execute(sa.select(sa.func.count()).select_from(case_history)).scalar_one()
    with InfluxQLClient(influx.url, influx.db) as iq:
        rows = [r for s in iq.query('SELECT "case_id", "action" FROM "lifeline_case"')
                for r in s.records()]
    assert sorted({int(r["case_id"]) for r in rows}) == sorted(case_ids)
    assert len(rows) == lines  # report, register, dispatch of each case: none overwritten


def test_a_severity_change_leaves_no_firing_row_under_the_old_severity(
        db_url: str, influxdb: ManagedService) -> None:
    """major → critical → resolved: the active-alert query (last point per device, rule
    and severity) shows the alert as critical while it fires and nowhere once resolved."""
    influx = Influx(influxdb.info.url)
    t0 = (time.time_ns() // S - 3600) * S
    devices = [Device("esc", "gas_alarm", grid="G1", district="D1")]
    influx.write(device_info_lines(devices, t0))
    p = AlertPipeline(open_database(db_url), MemoryRegistry(devices), AlertConfig(),
                      CaseConfig(), clock=lambda: t0, write_lines=influx.write)
    query = ('SELECT last("firing") AS "firing" FROM "lifeline_alert" '
             'GROUP BY "device", "rule", "severity"')

    def firing() -> set[str]:
        with InfluxQLClient(influx.url, influx.db) as iq:
            return {s.tag("severity") for s in iq.query(query) if s.values[0][1] == 1}

    p.process([Finding("event:alarm", "esc", "lel", FindingState.FIRING, Severity.MAJOR,
                       t0, 30.0)])
    assert firing() == {"major"}
    p.process([Finding("event:alarm", "esc", "lel", FindingState.FIRING, Severity.CRITICAL,
                       t0 + S, 55.0)])
    assert firing() == {"critical"}
    # the overview's "Active alerts" panel, its own query, in a view of the last 10
    # minutes a day later: the alert still fires, as critical only
    setup_sdk()
    board = next(b for b in all_boards(GrafanaTarget()) if b.uid == "lifeline-overview")
    (panel,) = [q for q in board.queries if q.panel == "Active alerts"]
    end_ms = t0 // 1_000_000 + 86_400_000
    late = TimeRange(end_ms - 600_000, end_ms)
    with InfluxQLClient(influx.url, influx.db) as iq:
        shown = [r for s in iq.query(interpolate(panel.query, resolve(to_json(board), iq, late),
                                                 late)) for r in s.records()]
    assert {(r["device"], r["severity"]) for r in shown if r["firing"] == 1} == {
        ("esc", "critical")}
    p.process([Finding("event:alarm", "esc", "lel", FindingState.RESOLVED, Severity.CRITICAL,
                       t0 + 2 * S, 3.0)])
    assert firing() == set()
