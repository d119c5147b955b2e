"""Case KPIs (数字城管 考核指标) over a period, overall or by grid, unit or device type.

Which cases: those **reported (上报, the case opened) in** ``[start, end)``, cancelled ones
(不予立案 / false alarm) left out — a cohort, so every numerator below is a subset of its
denominator, and a period's figures only settle as its cases are worked (a case reported
in one period and closed in the next counts in the first). Over that cohort:

- 上报数 ``cases``: the cases; 立案数 ``registered``: those registered (立案). Every
  registered case is dispatched at once, so 应处置数 (should be handled) = ``registered``;
- 处置数 ``handled``: registered cases whose latest handling stands (state handled,
  verified or closed) — a handling sent back to rework (返工) does not count until the
  case is handled again;
- 按期处置数 ``handled_on_time``: handled cases whose standing handling met the handle
  deadline in force when it was made (a rework sets a new one);
- 结案数 ``closed``; 返工数 ``reworked``: handled cases that went to rework at least once;
- 处置率 ``disposal_rate`` = handled / registered;
- 按期处置率 ``on_time_rate`` = handled_on_time / registered;
- 结案率 ``close_rate`` = closed / registered;
- 返工率 ``rework_rate`` = reworked / handled;
- time to dispatch (report → the unit accepted), to handle (report → the standing
  handling) and to close (report → closed), in seconds: mean and p90 (nearest rank) over
  the cases that got there.

A rate with a zero denominator is None.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.cases.model import Case, CaseState
from alerts.cases.store import case_from_row, cases
from tsdb.lineproto import FieldValue
from tsdb.schema import KPI, KPI_COUNTS, KPI_RATES, KPI_TIMES

# States in which the unit's latest handling stands (not sent back to rework).
HANDLED_STATES = frozenset({CaseState.HANDLED, CaseState.VERIFIED, CaseState.CLOSED})


class KpiScope(StrEnum):
    """How KPIs are grouped."""

    ALL = "all"
    GRID = "grid"
    UNIT = "unit"
    TYPE = "type"


@dataclass(frozen=True, slots=True)
class Kpi:
    """KPIs of one group."""

    scope: KpiScope
    key: str
    cases: int
    registered: int
    handled: int
    handled_on_time: int
    closed: int
    reworked: int
    overdue: int
    disposal_rate: float | None
    on_time_rate: float | None
    close_rate: float | None
    rework_rate: float | None
    mean_dispatch_s: float | None
    mean_handle_s: float | None
    mean_close_s: float | None
    p90_dispatch_s: float | None = None
    p90_handle_s: float | None = None
    p90_close_s: float | None = None


RATES = KPI_RATES  # the lifeline_kpi fields (tsdb.schema.KPI)
TIMES = KPI_TIMES


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) / 1e9 if values else None


def p90(values: list[int]) -> float | None:
    """The 90th percentile (nearest rank: the ⌈0.9·n⌉-th smallest) of ns, in seconds."""
    if not values:
        return None
    return sorted(values)[math.ceil(0.9 * len(values)) - 1] / 1e9


def _key(case: Case, scope: KpiScope) -> str:
    if scope is KpiScope.GRID:
        return case.grid or "-"
    if scope is KpiScope.UNIT:
        return case.unit or "-"
    if scope is KpiScope.TYPE:
        return case.device_type or "-"
    return "all"


def kpi_of(scope: KpiScope, key: str, cs: list[Case]) -> Kpi:
    """The KPIs of one group of (not cancelled) cases."""
    registered = [c for c in cs if c.registered_ns is not None]
    handled = [c for c in registered if c.state in HANDLED_STATES]
    on_time = [c for c in handled if c.handled_on_time is True]
    closed = [c for c in registered if c.state is CaseState.CLOSED]
    reworked = [c for c in handled if c.rework_count > 0]
    dispatch = [c.accepted_ns - c.created_ns for c in registered if c.accepted_ns is not None]
    handle = [c.handled_ns - c.created_ns for c in handled if c.handled_ns is not None]
    close = [c.closed_ns - c.created_ns for c in closed if c.closed_ns is not None]
    return Kpi(
        scope=scope, key=key, cases=len(cs), registered=len(registered),
        handled=len(handled), handled_on_time=len(on_time), closed=len(closed),
        reworked=len(reworked), overdue=sum(1 for c in cs if c.overdue),
        disposal_rate=_ratio(len(handled), len(registered)),
        on_time_rate=_ratio(len(on_time), len(registered)),
        close_rate=_ratio(len(closed), len(registered)),
        rework_rate=_ratio(len(reworked), len(handled)),
        mean_dispatch_s=_mean(dispatch), mean_handle_s=_mean(handle),
        mean_close_s=_mean(close), p90_dispatch_s=p90(dispatch), p90_handle_s=p90(handle),
        p90_close_s=p90(close),
    )


def kpis_of(items: list[Case], scope: KpiScope) -> list[Kpi]:
    """KPIs of already-selected cases, grouped by ``scope``, sorted by key."""
    groups: dict[str, list[Case]] = defaultdict(list)
    for c in items:
        if c.state is not CaseState.CANCELLED:
            groups[_key(c, scope)].append(c)
    if scope is KpiScope.ALL and not groups:
        groups["all"] = []  # the city-wide line is always there: no cases is news too
    return [kpi_of(scope, key, groups[key]) for key in sorted(groups)]


def compute(engine: Engine, start_ns: int, end_ns: int,
            scope: KpiScope = KpiScope.ALL) -> list[Kpi]:
    """KPIs of the cases reported (created) in ``[start_ns, end_ns)``."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(cases).where(cases.c.created_ns >= start_ns,
                                                   cases.c.created_ns < end_ns))
        items = [case_from_row(r) for r in rows]
    return kpis_of(items, scope)


def kpi_window(now_ns: int, period_ns: int) -> tuple[int, int]:
    """The KPI period of length ``period_ns`` ending with ``now_ns`` (included):
    ``[now - period + 1, now + 1)``. The ``lifeline_kpi`` point written at ``now_ns`` and
    ``/api/v1/kpi`` without ``start`` and ``end`` both answer for it."""
    return now_ns + 1 - period_ns, now_ns + 1


def kpi_lines(kpis: list[Kpi], at_ns: int) -> list[str]:
    """``lifeline_kpi`` lines (tags scope, key; rates as fractions, times in seconds)."""
    lines = []
    for k in kpis:
        fields: dict[str, FieldValue] = {n: getattr(k, n) for n in KPI_COUNTS}
        for name in (*RATES, *TIMES):
            value = getattr(k, name)
            fields[name] = None if value is None else float(value)
        lines.append(KPI.line({"scope": k.scope.value, "key": k.key}, fields, at_ns))
    return lines


def period_lines(engine: Engine, now_ns: int, period_ns: int) -> list[str]:
    """``lifeline_kpi`` lines of every scope for the period :func:`kpi_window` gives,
    stamped ``now_ns``."""
    start, end = kpi_window(now_ns, period_ns)
    lines: list[str] = []
    for scope in KpiScope:
        lines += kpi_lines(compute(engine, start, end, scope), now_ns)
    return lines
