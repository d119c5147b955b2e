"""Case listings behind the API: filtered cases, a case with its history and alerts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.cases.deadlines import overdue_stage
from alerts.cases.model import Case, CaseState, HistoryEntry
from alerts.cases.store import case_from_row, case_history_of, cases, get_case
from alerts.lifecycle.model import Alert
from alerts.lifecycle.store import alert_from_row, alerts
from rules.model import Severity


@dataclass(frozen=True, slots=True)
class CaseFilter:
    """Filter of case listings."""

    state: CaseState | None = None
    grid: str | None = None
    unit: str | None = None
    severity: Severity | None = None
    device_type: str | None = None
    overdue: bool | None = None
    limit: int = 100
    offset: int = 0


def list_cases(engine: Engine, f: CaseFilter, now_ns: int) -> tuple[list[Case], int]:
    """Cases matching ``f``, newest first; ``overdue`` also counts deadlines missed now."""
    cond: list[Any] = []
    if f.state is not None:
        cond.append(cases.c.state == f.state.value)
    if f.grid:
        cond.append(cases.c.grid == f.grid)
    if f.unit:
        cond.append(cases.c.unit == f.unit)
    if f.severity is not None:
        cond.append(cases.c.severity == f.severity.value)
    if f.device_type:
        cond.append(cases.c.device_type == f.device_type)
    with engine.connect() as conn:
        rows = [case_from_row(r) for r in conn.execute(
            sa.select(cases).where(*cond).order_by(cases.c.id.desc()))]
    if f.overdue is not None:
        rows = [c for c in rows
                if (c.overdue or overdue_stage(c, now_ns) is not None) == f.overdue]
    return rows[f.offset:f.offset + f.limit], len(rows)


def case_with_history(engine: Engine, case_id: int) -> tuple[Case, list[HistoryEntry],
                                                            list[Alert]]:
    """A case, its audit history and its alerts."""
    with engine.connect() as conn:
        case = get_case(conn, case_id)
        rows = conn.execute(sa.select(alerts).where(alerts.c.case_id == case_id)
                            .order_by(alerts.c.id))
        return case, case_history_of(conn, case_id), [alert_from_row(r) for r in rows]
