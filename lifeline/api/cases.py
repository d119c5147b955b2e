"""``/api/v1/cases`` (filter, get with history, register, cancel, dispatch callbacks) and
``/api/v1/kpi``.

Callbacks ``POST /api/v1/cases/{id}/actions`` are authenticated either by the webhook
contract's HMAC (``X-Lifeline-Timestamp`` + ``X-Lifeline-Signature`` over
``"{timestamp}.{body}"`` with the shared secret, within ``webhook.callback_window``) or by
a bearer token with the operator role. An ``Idempotency-Key`` header (or ``key`` in the
body) makes a repeated call return the first result without applying it again.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from alerts.cases import CaseBook
from alerts.errors import ConflictError, IllegalTransitionError, NotFoundError
from alerts.kpi import Kpi, KpiScope, compute
from alerts.model import CaseState
from alerts.ops import CaseFilter, apply_action, case_with_history, list_cases
from alerts.signing import verify
from alerts.workflow import CALLBACK_ACTIONS, Action
from lifeline.alerting import case_config
from lifeline.api.alerts import NS_RANGE, AlertPublic, RowId, in_ns_range
from lifeline.api.deps import EngineDep, Operator, SettingsDep, Viewer
from lifeline.auth import Principal, Role, TokenStore
from lifeline.settings import Settings
from rules.model import Severity, parse_duration_ns

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["cases"])
MAX_CALLBACK_BYTES = 64 * 1024


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HistoryPublic(_Schema):
    """One audit line."""

    at: str | None
    actor: str
    action: str
    from_state: str
    to_state: str
    note: str


class CasePublic(_Schema):
    """A case as the API (and the webhooks) show it."""

    id: int
    state: str
    severity: str
    title: str
    grid: str | None
    district: str | None
    device_type: str | None
    device: str | None
    unit: str | None
    external_id: str | None
    created: str | None
    updated: str | None
    registered: str | None
    dispatched: str | None
    accepted: str | None
    handled: str | None
    verified: str | None
    closed: str | None
    cancelled: str | None
    deadlines: dict[str, str | None]
    overdue: bool
    escalated: list[str]
    handled_on_time: bool | None
    rework_count: int
    return_count: int


class CaseDetailPublic(CasePublic):
    """A case with its audit history and alerts."""

    history: list[HistoryPublic]
    alerts: list[AlertPublic]


class CasesPublic(_Schema):
    """A page of cases and the total count of the filter."""

    data: list[CasePublic]
    count: int


class ActionCreate(_Schema):
    """A callback or duty-officer action on a case."""

    action: Literal["register", "dispatch", "accept", "start", "handled", "return", "verify",
                    "rework", "close", "cancel", "comment"]
    key: str | None = Field(default=None, min_length=1, max_length=128)
    actor: str = Field(default="", max_length=100)
    note: str = Field(default="", max_length=2000)
    external_id: str | None = Field(default=None, min_length=1, max_length=128)
    unit: str | None = Field(default=None, min_length=1, max_length=128)


class OfficerAction(_Schema):
    """Register or cancel by a duty officer."""

    note: str = Field(default="", max_length=2000)
    unit: str | None = Field(default=None, min_length=1, max_length=128)


class KpiPublic(_Schema):
    """KPIs of one group (rates are fractions; times in seconds)."""

    scope: str
    key: str
    cases: int
    registered: int
    handled: int
    handled_on_time: int
    closed: int
    reworked: int
    overdue: int
    disposal_rate: float | None = Field(description="处置率 = handled / registered")
    on_time_rate: float | None = Field(description="按期处置率 = handled on time / handled")
    close_rate: float | None = Field(description="结案率 = closed / registered")
    rework_rate: float | None = Field(description="返工率 = reworked / handled")
    mean_dispatch_s: float | None
    mean_handle_s: float | None
    mean_close_s: float | None


class KpisPublic(_Schema):
    """KPIs of a period."""

    start: str
    end: str
    data: list[KpiPublic]
    count: int


def _case(doc: dict[str, Any]) -> CasePublic:
    return CasePublic.model_validate(doc)


def _book(request: Request, settings: Settings) -> CaseBook:
    book = getattr(request.app.state, "case_book", None)
    if isinstance(book, CaseBook):
        return book
    return CaseBook(case_config(settings), lambda line: None)


def _wake(request: Request) -> None:
    wake = getattr(request.app.state, "outbox_wake", None)
    if callable(wake):
        wake()


@router.get("/cases", response_model=CasesPublic)
def get_cases(
    engine: EngineDep, _: Viewer,
    state: CaseState | None = None, grid: str | None = None, unit: str | None = None,
    severity: Severity | None = None, device_type: str | None = None,
    overdue: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> CasesPublic:
    """Cases, newest first."""
    items, total = list_cases(engine, CaseFilter(state, grid, unit, severity, device_type,
                                                 overdue, limit, offset), time.time_ns())
    return CasesPublic(data=[_case(c.doc()) for c in items], count=total)


@router.get("/cases/{case_id}", response_model=CaseDetailPublic,
            responses={404: {"description": "no such case"}})
def get_case_detail(case_id: RowId, engine: EngineDep, _: Viewer) -> CaseDetailPublic:
    """A case with its full audit history (who, what, when) and its alerts."""
    try:
        case, history, members = case_with_history(engine, case_id)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    from alerts.model import iso  # noqa: PLC0415

    return CaseDetailPublic.model_validate({
        **case.doc(),
        "history": [HistoryPublic(at=iso(h.at_ns), actor=h.actor, action=h.action,
                                  from_state=h.from_state, to_state=h.to_state, note=h.note)
                    for h in history],
        "alerts": [AlertPublic.model_validate(a.doc()) for a in members],
    })


def _run(engine: Engine, book: CaseBook, case_id: int, action: Action, actor: str,
         body: ActionCreate | OfficerAction, key: str | None,
         raw: bytes) -> tuple[CasePublic, bool]:
    try:
        case, replayed = apply_action(
            engine, book, case_id, action, actor, time.time_ns(), note=body.note,
            external_id=getattr(body, "external_id", None), unit=body.unit, key=key,
            request=raw)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except (IllegalTransitionError, ConflictError) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except sa.exc.IntegrityError as exc:  # the same key raced in twice
        raise HTTPException(status.HTTP_409_CONFLICT,
                            "idempotency key is being used concurrently; retry") from exc
    return _case(case.doc()), replayed


@router.post("/cases/{case_id}/register", response_model=CasePublic,
             responses={404: {"description": "no such case"},
                        409: {"description": "not allowed in the case's state"}})
def post_register(case_id: RowId, body: OfficerAction, request: Request, engine: EngineDep,
                  settings: SettingsDep, who: Operator) -> CasePublic:
    """立案: register a held case (it is routed and dispatched at once)."""
    case, _ = _run(engine, _book(request, settings), case_id, Action.REGISTER, who.name, body,
                   None, b"")
    _wake(request)
    return case


@router.post("/cases/{case_id}/cancel", response_model=CasePublic,
             responses={404: {"description": "no such case"},
                        409: {"description": "not allowed in the case's state"}})
def post_cancel(case_id: RowId, body: OfficerAction, request: Request, engine: EngineDep,
                settings: SettingsDep, who: Operator) -> CasePublic:
    """不予立案 / false alarm."""
    case, _ = _run(engine, _book(request, settings), case_id, Action.CANCEL, who.name, body,
                   None, b"")
    _wake(request)
    return case


def _callback_principal(request: Request, raw: bytes, settings: Settings) -> Principal:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        store: TokenStore = request.app.state.tokens
        principal = store.authenticate(auth[7:].strip())
        if principal is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid bearer token")
        if principal.role < Role.OPERATOR:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                "role viewer may not do this; operator required")
        return principal
    ts = request.headers.get("x-lifeline-timestamp", "")
    sig = request.headers.get("x-lifeline-signature", "")
    secret = settings.webhook.secret.get_secret_value()
    if not ts or not sig:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            "missing bearer token or X-Lifeline-Timestamp/-Signature")
    if not secret:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "signed callbacks need webhook.secret")
    if not (ts.isascii() and ts.isdigit()) or len(ts) > 12:  # "²".isdigit() is True
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "X-Lifeline-Timestamp: epoch seconds")
    window = parse_duration_ns(settings.webhook.callback_window) / 1e9
    if abs(time.time() - int(ts)) > window:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            "X-Lifeline-Timestamp outside the replay window")
    if not verify(secret, ts, raw, sig):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "bad signature")
    return Principal("dispatch", Role.OPERATOR)


@router.post("/cases/{case_id}/actions", response_model=CasePublic,
             responses={401: {}, 403: {}, 404: {}, 409: {}, 413: {}, 422: {}})
async def post_action(case_id: RowId, request: Request, response: Response,
                      engine: EngineDep, settings: SettingsDep) -> CasePublic:
    """A dispatch-system callback (accept, start, handled, return, verify, close, cancel,
    comment) or an operator's action; idempotent on ``Idempotency-Key``."""
    raw = await request.body()
    if len(raw) > MAX_CALLBACK_BYTES:
        raise HTTPException(413, f"callback body larger than {MAX_CALLBACK_BYTES} bytes")
    principal = _callback_principal(request, raw, settings)
    try:
        body = ActionCreate.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise HTTPException(422, "body is not JSON") from exc
    except ValidationError as exc:
        raise HTTPException(422,
                            orjson.loads(exc.json(include_url=False, include_input=False))
                            ) from exc
    action = Action(body.action)
    signed = principal.name == "dispatch" and not request.headers.get("authorization")
    if signed and action not in CALLBACK_ACTIONS:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"the dispatch system may not {action.value}")
    key = request.headers.get("idempotency-key") or body.key
    if key is not None and not 1 <= len(key) <= 128:
        raise HTTPException(422, "Idempotency-Key: 1-128 chars")
    actor = f"{principal.name}:{body.actor}" if body.actor else principal.name
    case, replayed = await run_in_threadpool(
        _run, engine, _book(request, settings), case_id, action, actor, body, key, raw)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        _wake(request)
    log.info("case %d callback %s by %s (key=%s replayed=%s)", case_id, action.value, actor,
             key, replayed)
    return case


@router.get("/kpi", response_model=KpisPublic)
def get_kpi(engine: EngineDep, _: Viewer, start: datetime, end: datetime | None = None,
            by: Literal["all", "grid", "unit", "type"] = "all") -> KpisPublic:
    """处置率, 按期处置率, 结案率, 返工率 and mean times for cases created in [start, end)."""
    if start.tzinfo is None or (end is not None and end.tzinfo is None):
        raise HTTPException(422, "give times with a zone")
    if not in_ns_range(start) or (end is not None and not in_ns_range(end)):
        raise HTTPException(422, f"start, end: {NS_RANGE}")
    start_ns = int(start.timestamp() * 1e9)
    end_ns = int(end.timestamp() * 1e9) if end else time.time_ns()
    if end_ns <= start_ns:
        raise HTTPException(422, "end must be after start")
    items: list[Kpi] = compute(engine, start_ns, end_ns, KpiScope(by))
    from alerts.model import iso  # noqa: PLC0415

    data = [KpiPublic(scope=k.scope.value, key=k.key, cases=k.cases, registered=k.registered,
                      handled=k.handled, handled_on_time=k.handled_on_time, closed=k.closed,
                      reworked=k.reworked, overdue=k.overdue, disposal_rate=k.disposal_rate,
                      on_time_rate=k.on_time_rate, close_rate=k.close_rate,
                      rework_rate=k.rework_rate, mean_dispatch_s=k.mean_dispatch_s,
                      mean_handle_s=k.mean_handle_s, mean_close_s=k.mean_close_s)
            for k in items]
    return KpisPublic(start=iso(start_ns) or "", end=iso(end_ns) or "", data=data,
                      count=len(data))
