"""``/api/v1/deliveries``: the webhook outbox (list, dead letters, resend)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict

from alerts.delivery.model import Delivery, DeliveryStatus
from alerts.delivery.ops import list_deliveries, resend
from alerts.errors import NotFoundError
from alerts.timefmt import iso
from lifeline.api.alerts import MAX_ID, RowId
from lifeline.api.deps import Admin, Ctx, EngineDep, Viewer

router = APIRouter(prefix="/api/v1/deliveries", tags=["deliveries"])


class DeliveryPublic(BaseModel):
    """One outbox row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int
    delivery_id: str
    event_id: str
    event: str
    status: str
    attempts: int
    created: str | None
    next_attempt: str | None
    last_error: str
    last_status: int | None
    delivered: str | None
    delivered_via: str
    case_id: int | None
    target: str = ""  # "": the dispatch webhook; else a notification channel's name
    payload: dict[str, Any]


class DeliveriesPublic(BaseModel):
    """A page of deliveries and the total count of the filter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: list[DeliveryPublic]
    count: int


def _public(d: Delivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=d.id, delivery_id=d.delivery_id, event_id=d.event_id, event=d.event,
        status=d.status.value, attempts=d.attempts, created=iso(d.created_ns),
        next_attempt=iso(d.next_attempt_ns) if d.status is DeliveryStatus.PENDING else None,
        last_error=d.last_error, last_status=d.last_status, delivered=iso(d.delivered_ns),
        delivered_via=d.delivered_via, case_id=d.case_id, target=d.target, payload=d.payload)


@router.get("", response_model=DeliveriesPublic)
def get_deliveries(engine: EngineDep, _: Viewer, status: DeliveryStatus | None = None,
                   event: str | None = None,
                   case_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
                   target: Annotated[str | None, Query(max_length=64)] = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                   offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> DeliveriesPublic:
    """Deliveries, newest first (``status=dead`` lists the dead letters; ``target``: a
    notification channel's rows, ``target=`` the dispatch webhook's)."""
    items, total = list_deliveries(engine, status=status, event=event, case_id=case_id,
                                   target=target, limit=limit, offset=offset)
    return DeliveriesPublic(data=[_public(d) for d in items], count=total)


@router.post("/{row_id}/resend", response_model=DeliveryPublic,
             responses={404: {"description": "no such delivery"}})
def post_resend(row_id: RowId, ctx: Ctx, engine: EngineDep, _: Admin) -> DeliveryPublic:
    """Queue a delivery again, with the same delivery id."""
    try:
        d = resend(engine, row_id, time.time_ns())
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    ctx.wake_outbox()
    return _public(d)
