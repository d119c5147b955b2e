"""InfluxDB line protocol for alert transitions, case state changes and KPIs (docs/design.md)."""

from __future__ import annotations

from alerts.model import Alert, Case
from devices.series import escape_string_field, escape_tag


def _tag(key: str, value: str) -> str:
    return f",{key}={escape_tag(value)}" if value else ""


def _alert_tags(a: Alert) -> str:
    return (f"lifeline_alert,device={escape_tag(a.device_id)},rule={escape_tag(a.rule_id)},"
            f"severity={a.severity.value}" + _tag("grid", a.grid) + _tag("type", a.device_type)
            + _tag("unit", a.unit))


def alert_line(a: Alert, at_ns: int) -> str:
    """``lifeline_alert``: one line per alert transition."""
    tags = _alert_tags(a)
    fields = (f"state={escape_string_field(a.state.value)},"
              f"firing={1 if a.state.value == 'firing' else 0}i,value={float(a.value)!r},"
              f"alert_id={a.id}i,flapping={1 if a.flapping else 0}i")
    return f"{tags} {fields} {at_ns}"


def superseded_line(a: Alert, at_ns: int) -> str:
    """``lifeline_alert``: closes the series of an alert's old severity when the severity
    changes (severity is a tag), so the old series' last point is not firing."""
    tags = _alert_tags(a)
    fields = (f'state="superseded",firing=0i,value={float(a.value)!r},'
              f"alert_id={a.id}i,flapping={1 if a.flapping else 0}i")
    return f"{tags} {fields} {at_ns}"


def case_line(c: Case, action: str, at_ns: int) -> str:
    """``lifeline_case``: one line per case state change (or escalation)."""
    tags = (f"lifeline_case,severity={c.severity.value},state={c.state.value}"
            + _tag("grid", c.grid) + _tag("type", c.device_type) + _tag("unit", c.unit))
    fields = (f"case_id={c.id}i,action={escape_string_field(action)},"
              f"overdue={1 if c.overdue else 0}i,rework_count={c.rework_count}i")
    return f"{tags} {fields} {at_ns}"
