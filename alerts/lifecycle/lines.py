"""InfluxDB line protocol of alert transitions, ``lifeline_alert`` (:data:`tsdb.schema.ALERT`)."""

from __future__ import annotations

from alerts.lifecycle.model import Alert
from tsdb.lineproto import FieldValue
from tsdb.schema import ALERT


def _alert_tags(a: Alert) -> dict[str, str]:
    return {"device": a.device_id, "rule": a.rule_id, "severity": a.severity.value,
            "grid": a.grid, "type": a.device_type, "unit": a.unit}


def _fields(a: Alert, state: str) -> dict[str, FieldValue]:
    return {"state": state, "firing": 1 if state == "firing" else 0, "value": float(a.value),
            "alert_id": a.id, "flapping": 1 if a.flapping else 0}


def alert_line(a: Alert, at_ns: int) -> str:
    """``lifeline_alert``: one line per alert transition."""
    return ALERT.line(_alert_tags(a), _fields(a, a.state.value), at_ns)


def superseded_line(a: Alert, at_ns: int) -> str:
    """``lifeline_alert``: closes the series of an alert's old severity when the severity
    changes (severity is a tag), so the old series' last point is not firing."""
    return ALERT.line(_alert_tags(a), _fields(a, "superseded"), at_ns)
