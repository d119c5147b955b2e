"""``/api/v1/silences``: create, list, expire silences and maintenance windows."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from alerts.errors import AlertsError, NotFoundError
from alerts.silences.model import MATCHER_KEYS, SilenceKind
from alerts.silences.ops import create_silence, expire_silence, list_silences
from alerts.timefmt import iso
from lifeline.api.alerts import NS_RANGE, RowId, in_ns_range
from lifeline.api.deps import EngineDep, Operator, Viewer

# tagged "alerts" like before the split: the OpenAPI document is unchanged
router = APIRouter(prefix="/api/v1", tags=["alerts"])


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SilenceCreate(_Schema):
    """A silence or maintenance window: glob matchers on device, type, grid, rule."""

    kind: SilenceKind = SilenceKind.SILENCE
    matchers: dict[str, str] = Field(min_length=1, max_length=4)
    starts_at: datetime | None = None
    ends_at: datetime
    comment: str = Field(min_length=1, max_length=1000)

    @field_validator("matchers")
    @classmethod
    def _keys(cls, v: dict[str, str]) -> dict[str, str]:
        bad = set(v) - set(MATCHER_KEYS)
        if bad:
            raise ValueError(f"unknown matcher keys {sorted(bad)}; use {list(MATCHER_KEYS)}")
        for pattern in v.values():
            if not 1 <= len(pattern) <= 200:
                raise ValueError("a matcher pattern has 1 to 200 characters")
        return v

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-01-01T08:00:00+08:00 or Z)")
        if v is not None and not in_ns_range(v):
            raise ValueError(NS_RANGE)
        return v


class SilencePublic(_Schema):
    """A stored silence."""

    id: int
    kind: str
    matchers: dict[str, str]
    starts_at: str | None
    ends_at: str | None
    created_by: str
    comment: str
    active: bool


class SilencesPublic(_Schema):
    """Silences and their count."""

    data: list[SilencePublic]
    count: int


def _ns(dt: datetime) -> int:
    return int(dt.timestamp() * 1e9)


def _silence(s: Any, now: int) -> SilencePublic:
    return SilencePublic(id=s.id, kind=s.kind.value, matchers=s.matchers,
                         starts_at=iso(s.starts_ns), ends_at=iso(s.ends_ns),
                         created_by=s.created_by, comment=s.comment, active=s.active(now))


@router.post("/silences", response_model=SilencePublic, status_code=201)
def post_silence(body: SilenceCreate, engine: EngineDep, who: Operator) -> SilencePublic:
    """Create a silence or maintenance window."""
    now = time.time_ns()
    starts = _ns(body.starts_at) if body.starts_at else now
    try:
        s = create_silence(engine, kind=body.kind, matchers=body.matchers, starts_ns=starts,
                           ends_ns=_ns(body.ends_at), created_by=who.name,
                           comment=body.comment, now_ns=now)
    except AlertsError as exc:
        raise HTTPException(422, str(exc)) from exc
    return _silence(s, now)


@router.get("/silences", response_model=SilencesPublic)
def get_silences(engine: EngineDep, _: Viewer,
                 include_expired: bool = False,
                 kind: Literal["silence", "maintenance"] | None = None) -> SilencesPublic:
    """Silences not yet ended (or all of them)."""
    now = time.time_ns()
    items = [s for s in list_silences(engine, include_expired=include_expired, now_ns=now)
             if kind is None or s.kind.value == kind]
    return SilencesPublic(data=[_silence(s, now) for s in items], count=len(items))


@router.post("/silences/{silence_id}/expire", response_model=SilencePublic,
             responses={404: {"description": "no such silence"}})
def post_expire(silence_id: RowId, engine: EngineDep, who: Operator) -> SilencePublic:
    """End a silence now."""
    now = time.time_ns()
    try:
        return _silence(expire_silence(engine, silence_id, who.name, now), now)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


__all__ = ["router"]
