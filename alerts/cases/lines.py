"""InfluxDB line protocol of case state changes, ``lifeline_case`` (:data:`tsdb.schema.CASE`)."""

from __future__ import annotations

from alerts.cases.model import Case
from tsdb.schema import CASE


def case_line(c: Case, action: str, at_ns: int) -> str:
    """``lifeline_case``: one line per case state change (or escalation)."""
    tags = {"severity": c.severity.value, "state": c.state.value, "grid": c.grid,
            "type": c.device_type, "unit": c.unit}
    return CASE.line(tags, {"case_id": c.id, "action": action, "overdue": 1 if c.overdue else 0,
                            "rework_count": c.rework_count}, at_ns)
