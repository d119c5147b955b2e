"""Case KPIs over a period, overall or by grid, unit or device type.

Over the cases created in ``[start, end)``, not cancelled:

- 立案数 ``registered``: cases registered (立案);
- 处置率 ``disposal_rate`` = handled / registered (handled: reached 处置完成 at least once);
- 按期处置率 ``on_time_rate`` = handled within the handle deadline / handled;
- 结案率 ``close_rate`` = closed / registered;
- 返工率 ``rework_rate`` = handled cases that went to rework at least once / handled;
- mean time to dispatch (report → unit accepted), to handle (report → last handled) and to
  close (report → closed), in seconds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.model import Case, CaseState
from alerts.schema import cases
from alerts.store import case_from_row
from devices.series import escape_tag


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


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) / 1e9 if values else None


def _key(case: Case, scope: KpiScope) -> str:
    if scope is KpiScope.GRID:
        return case.grid or "-"
    if scope is KpiScope.UNIT:
        return case.unit or "-"
    if scope is KpiScope.TYPE:
        return case.device_type or "-"
    return "all"


def kpis_of(items: list[Case], scope: KpiScope) -> list[Kpi]:
    """KPIs of already-selected cases, grouped by ``scope``, sorted by key."""
    groups: dict[str, list[Case]] = defaultdict(list)
    for c in items:
        if c.state is not CaseState.CANCELLED:
            groups[_key(c, scope)].append(c)
    out = []
    for key in sorted(groups):
        cs = groups[key]
        registered = [c for c in cs if c.registered_ns is not None]
        handled = [c for c in registered if c.handled_ns is not None]
        on_time = [c for c in handled if c.handled_on_time is not False]
        closed = [c for c in registered if c.closed_ns is not None]
        reworked = [c for c in handled if c.rework_count > 0]
        out.append(Kpi(
            scope=scope, key=key, cases=len(cs), registered=len(registered),
            handled=len(handled), handled_on_time=len(on_time), closed=len(closed),
            reworked=len(reworked), overdue=sum(1 for c in cs if c.overdue),
            disposal_rate=_ratio(len(handled), len(registered)),
            on_time_rate=_ratio(len(on_time), len(handled)),
            close_rate=_ratio(len(closed), len(registered)),
            rework_rate=_ratio(len(reworked), len(handled)),
            mean_dispatch_s=_mean([c.accepted_ns - c.created_ns for c in cs
                                   if c.accepted_ns is not None]),
            mean_handle_s=_mean([c.handled_ns - c.created_ns for c in handled
                                 if c.handled_ns is not None]),
            mean_close_s=_mean([c.closed_ns - c.created_ns for c in closed
                                if c.closed_ns is not None]),
        ))
    return out


def compute(engine: Engine, start_ns: int, end_ns: int,
            scope: KpiScope = KpiScope.ALL) -> list[Kpi]:
    """KPIs of the cases created in ``[start_ns, end_ns)``."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(cases).where(cases.c.created_ns >= start_ns,
                                                   cases.c.created_ns < end_ns))
        items = [case_from_row(r) for r in rows]
    return kpis_of(items, scope)


def kpi_lines(kpis: list[Kpi], at_ns: int) -> list[str]:
    """``lifeline_kpi`` lines (tags scope, key; rates as fractions, times in seconds)."""
    lines = []
    for k in kpis:
        fields = [f"cases={k.cases}i", f"registered={k.registered}i", f"handled={k.handled}i",
                  f"closed={k.closed}i", f"reworked={k.reworked}i", f"overdue={k.overdue}i"]
        for name in ("disposal_rate", "on_time_rate", "close_rate", "rework_rate",
                     "mean_dispatch_s", "mean_handle_s", "mean_close_s"):
            value = getattr(k, name)
            if value is not None:
                fields.append(f"{name}={float(value)!r}")
        lines.append(f"lifeline_kpi,scope={k.scope.value},key={escape_tag(k.key)} "
                     f"{','.join(fields)} {at_ns}")
    return lines
