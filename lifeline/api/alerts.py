"""``/api/v1/alerts``: filter, ack, unack."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field

from alerts.errors import NotFoundError
from alerts.lifecycle.model import AlertState
from alerts.lifecycle.ops import AlertFilter, ack_alert, list_alerts, unack_alert
from lifeline.api.deps import EngineDep, Operator, Viewer
from rules.model import Severity

router = APIRouter(prefix="/api/v1", tags=["alerts"])
MAX_ID = 2**31 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ID, description="a stored row id")]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AlertPublic(_Schema):
    """An alert as the API shows it."""

    id: int
    fingerprint: str
    state: str
    rule: str
    severity: str
    device: str
    device_type: str | None
    grid: str | None
    district: str | None
    unit: str | None
    metric: str
    value: float
    flapping: bool
    suppressed: str | None
    case_id: int | None
    first_seen: str | None
    changed: str | None
    fired: str | None
    resolved: str | None
    acked_by: str | None
    acked: str | None
    ack_note: str | None
    at: str | None


class AlertsPublic(_Schema):
    """A page of alerts and the total count of the filter."""

    data: list[AlertPublic]
    count: int


class AckCreate(_Schema):
    """An acknowledgement by duty staff."""

    note: str = Field(default="", max_length=1000)


def _alert(doc: dict[str, Any]) -> AlertPublic:
    return AlertPublic.model_validate(doc)


NS_RANGE = "a time between 1970-01-01 and 2262-04-11 (stored as epoch nanoseconds)"
_MAX_NS = 2**63 - 1


def in_ns_range(dt: datetime) -> bool:
    """True when ``dt`` (zone-aware) fits the stored epoch-nanosecond integers."""
    return 0 <= dt.timestamp() * 1e9 < _MAX_NS


@router.get("/alerts", response_model=AlertsPublic)
def get_alerts(
    engine: EngineDep, _: Viewer,
    state: AlertState | None = None, device: str | None = None, grid: str | None = None,
    rule: str | None = None, severity: Severity | None = None, acked: bool | None = None,
    case_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> AlertsPublic:
    """Alerts, most recently changed first."""
    items, total = list_alerts(engine, AlertFilter(state, device, grid, rule, severity, acked,
                                                   case_id, limit, offset))
    return AlertsPublic(data=[_alert(a.doc()) for a in items], count=total)


@router.post("/alerts/{alert_id}/ack", response_model=AlertPublic,
             responses={404: {"description": "no such alert"}})
def post_ack(alert_id: RowId, body: AckCreate, engine: EngineDep, who: Operator) -> AlertPublic:
    """Acknowledge an alert (who and when are recorded)."""
    try:
        return _alert(ack_alert(engine, alert_id, who.name, body.note, time.time_ns()).doc())
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


@router.post("/alerts/{alert_id}/unack", response_model=AlertPublic,
             responses={404: {"description": "no such alert"}})
def post_unack(alert_id: RowId, engine: EngineDep, who: Operator) -> AlertPublic:
    """Remove the acknowledgement."""
    try:
        return _alert(unack_alert(engine, alert_id, who.name).doc())
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


__all__ = ["router"]
