"""``/api/v1/cases`` (filter, get with history, register, cancel, dispatch callbacks) and
``/api/v1/kpi``.

Callbacks ``POST /api/v1/cases/{id}/actions`` carry exactly one credential, else 401:
either a v2 signature (``X-Lifeline-Timestamp`` + ``X-Lifeline-Signature: v2=<hex>``, an
HMAC with the shared secret over method, path, ``Idempotency-Key``, timestamp and body, see
:mod:`alerts.delivery.signing`; within ``webhook.callback_window``, each signature used once) or
``Authorization: Bearer <token>`` of the operator role. An ``Idempotency-Key`` header (or
``key`` in the body) makes a repeated call answer the stored first answer without applying
it again.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from alerts.cases.actions import ActionOutcome, SignedRequest, apply_action
from alerts.cases.book import CaseBook
from alerts.cases.kpi import Kpi, KpiScope, compute, kpi_window
from alerts.cases.model import CaseState
from alerts.cases.ops import CaseFilter, case_with_history, list_cases
from alerts.cases.workflow import CALLBACK_ACTIONS, Action
from alerts.delivery.signing import CALLBACK_SCHEME, verify_callback
from alerts.errors import ConflictError, IllegalTransitionError, NotFoundError, ReplayError
from lifeline.alerting import case_config
from lifeline.api.alerts import NS_RANGE, AlertPublic, RowId, in_ns_range
from lifeline.api.deps import ApiContext, Ctx, EngineDep, Operator, SettingsDep, Viewer
from lifeline.auth import Principal, Role
from rules.model import Severity

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
    on_time_rate: float | None = Field(
        description="按期处置率 = handled within the handle deadline / registered")
    close_rate: float | None = Field(description="结案率 = closed / registered")
    rework_rate: float | None = Field(description="返工率 = reworked / handled")
    mean_dispatch_s: float | None
    mean_handle_s: float | None
    mean_close_s: float | None
    p90_dispatch_s: float | None
    p90_handle_s: float | None
    p90_close_s: float | None


class KpisPublic(_Schema):
    """KPIs of a period."""

    start: str
    end: str
    data: list[KpiPublic]
    count: int


def _case(doc: dict[str, Any]) -> CasePublic:
    return CasePublic.model_validate(doc)


def _book(ctx: ApiContext) -> CaseBook:
    if ctx.case_book is not None:
        return ctx.case_book
    return CaseBook(case_config(ctx.settings), lambda line: None)


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
    from alerts.timefmt import iso  # noqa: PLC0415

    return CaseDetailPublic.model_validate({
        **case.doc(),
        "history": [HistoryPublic(at=iso(h.at_ns), actor=h.actor, action=h.action,
                                  from_state=h.from_state, to_state=h.to_state, note=h.note)
                    for h in history],
        "alerts": [AlertPublic.model_validate(a.doc()) for a in members],
    })


def _apply(engine: Engine, book: CaseBook, case_id: int, action: Action, actor: str,
           body: ActionCreate | OfficerAction, key: str | None, raw: bytes,
           signed: SignedRequest | None = None) -> ActionOutcome:
    try:
        return apply_action(
            engine, book, case_id, action, actor, time.time_ns(), note=body.note,
            external_id=getattr(body, "external_id", None), unit=body.unit, key=key,
            request=raw, signed=signed)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ReplayError as exc:
        log.warning("signed callback for case %d refused: %s", case_id, exc)
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except (IllegalTransitionError, ConflictError) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except sa.exc.IntegrityError as exc:  # the same key raced in twice
        raise HTTPException(status.HTTP_409_CONFLICT,
                            "idempotency key is being used concurrently; retry") from exc


def _run(engine: Engine, book: CaseBook, case_id: int, action: Action, actor: str,
         body: ActionCreate | OfficerAction, key: str | None,
         raw: bytes) -> tuple[CasePublic, bool]:
    outcome = _apply(engine, book, case_id, action, actor, body, key, raw)
    doc = outcome.case.doc() if outcome.case is not None else orjson.loads(outcome.body)
    return _case(doc), outcome.replayed


@router.post("/cases/{case_id}/register", response_model=CasePublic,
             responses={404: {"description": "no such case"},
                        409: {"description": "not allowed in the case's state"}})
def post_register(case_id: RowId, body: OfficerAction, ctx: Ctx, engine: EngineDep,
                  who: Operator) -> CasePublic:
    """立案: register a held case (it is routed and dispatched at once)."""
    case, _ = _run(engine, _book(ctx), case_id, Action.REGISTER, who.name, body, None, b"")
    ctx.wake_outbox()
    return case


@router.post("/cases/{case_id}/cancel", response_model=CasePublic,
             responses={404: {"description": "no such case"},
                        409: {"description": "not allowed in the case's state"}})
def post_cancel(case_id: RowId, body: OfficerAction, ctx: Ctx, engine: EngineDep,
                who: Operator) -> CasePublic:
    """不予立案 / false alarm."""
    case, _ = _run(engine, _book(ctx), case_id, Action.CANCEL, who.name, body, None, b"")
    ctx.wake_outbox()
    return case


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail,
                         headers={"WWW-Authenticate": "Bearer"})


def _refused(case_id: int, detail: str) -> HTTPException:
    """A refused signed callback: logged (never with its headers) and answered 401."""
    log.warning("signed callback for case %d refused: %s", case_id, detail)
    return _unauthorized(detail)


def _header_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header as UTF-8 text ("" when absent, None when it is not
    UTF-8; Starlette hands header bytes over as latin-1)."""
    value = request.headers.get("idempotency-key", "")
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None


def _callback_principal(request: Request, raw: bytes, ctx: ApiContext,
                        case_id: int) -> tuple[Principal, SignedRequest | None]:
    """Who calls, by exactly one credential: a bearer token (operator role) or a v2
    signature of this very request; 401 for none, both, or another scheme."""
    settings = ctx.settings
    auth = request.headers.get("authorization")
    ts = request.headers.get("x-lifeline-timestamp")
    sig = request.headers.get("x-lifeline-signature")
    signs = ts is not None or sig is not None
    if auth is None and not signs:
        raise _unauthorized("no credential: send either Authorization: Bearer <token> or "
                            "X-Lifeline-Timestamp and X-Lifeline-Signature")
    if auth is not None and signs:
        raise _refused(case_id, "two credentials: send either a bearer token or a "
                                "signature, not both")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            raise _unauthorized("Authorization: only the Bearer scheme is accepted")
        principal = ctx.tokens.authenticate(token.strip()) if token.strip() else None
        if principal is None:
            raise _unauthorized("invalid bearer token")
        if principal.role < Role.OPERATOR:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                "role viewer may not do this; operator required")
        return principal, None
    secret = settings.webhook.secret.get_secret_value()
    if not ts or not sig:
        raise _refused(case_id, "a signed callback needs X-Lifeline-Timestamp and "
                                "X-Lifeline-Signature")
    if not secret:
        raise _refused(case_id, "signed callbacks need webhook.secret")
    if not (ts.isascii() and ts.isdigit()) or len(ts) > 12:  # "²".isdigit() is True
        raise _refused(case_id, "X-Lifeline-Timestamp: epoch seconds")
    if not sig.startswith(f"{CALLBACK_SCHEME}="):
        raise _refused(case_id, f"X-Lifeline-Signature: callbacks are signed with the "
                                f"{CALLBACK_SCHEME} scheme ({CALLBACK_SCHEME}=<hex>)")
    window_ns = settings.webhook.callback_window.ns
    if abs(time.time() - int(ts)) > window_ns / 1e9:
        raise _refused(case_id, "X-Lifeline-Timestamp outside the replay window")
    key = _header_key(request)
    path = f"/api/v1/cases/{case_id}/actions"
    if key is None or not verify_callback(secret, request.method, path, key, ts, raw, sig):
        raise _refused(case_id, "bad signature")
    signed = SignedRequest(sig.removeprefix(f"{CALLBACK_SCHEME}="), int(ts), window_ns)
    return Principal("dispatch", Role.OPERATOR), signed


@router.post("/cases/{case_id}/actions", response_model=CasePublic,
             responses={401: {}, 403: {}, 404: {}, 409: {}, 413: {}, 422: {}},
             # the body is read raw (the signature covers its bytes): declared here
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": ActionCreate.model_json_schema()}}}})
async def post_action(case_id: RowId, request: Request, engine: EngineDep,
                      ctx: Ctx) -> CasePublic | Response:
    """A dispatch-system callback (accept, start, handled, return, verify, close, cancel,
    comment) or an operator's action; idempotent on ``Idempotency-Key`` (a repeat answers
    the stored first answer with ``Idempotent-Replayed: true``)."""
    raw = await request.body()
    if len(raw) > MAX_CALLBACK_BYTES:
        raise HTTPException(413, f"callback body larger than {MAX_CALLBACK_BYTES} bytes")
    principal, signed = _callback_principal(request, raw, ctx, case_id)
    try:
        body = ActionCreate.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise HTTPException(422, "body is not JSON") from exc
    except ValidationError as exc:
        raise HTTPException(422,
                            orjson.loads(exc.json(include_url=False, include_input=False))
                            ) from exc
    action = Action(body.action)
    if signed is not None and action not in CALLBACK_ACTIONS:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"the dispatch system may not {action.value}")
    header_key = _header_key(request)
    if header_key is None:
        raise HTTPException(422, "Idempotency-Key: 1-128 chars of UTF-8 text")
    key = header_key or body.key
    if key is not None and not 1 <= len(key) <= 128:
        raise HTTPException(422, "Idempotency-Key: 1-128 chars of UTF-8 text")
    actor = f"{principal.name}:{body.actor}" if body.actor else principal.name
    outcome = await run_in_threadpool(
        _apply, engine, _book(ctx), case_id, action, actor, body, key, raw, signed)
    replayed = outcome.replayed
    if not replayed:
        ctx.wake_outbox()
    log.info("case %d callback %s by %s (key=%s replayed=%s)", case_id, action.value, actor,
             key, replayed)
    if replayed:
        return Response(outcome.body, outcome.status, media_type="application/json",
                        headers={"Idempotent-Replayed": "true"})
    doc = outcome.case.doc() if outcome.case is not None else orjson.loads(outcome.body)
    return _case(doc)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_ns(t: datetime) -> int:
    """Exact epoch nanoseconds of an aware datetime (no float rounding)."""
    return (t - _EPOCH) // timedelta(microseconds=1) * 1000


@router.get("/kpi", response_model=KpisPublic)
def get_kpi(engine: EngineDep, settings: SettingsDep, _: Viewer,
            start: datetime | None = None, end: datetime | None = None,
            by: Literal["all", "grid", "unit", "type"] = "all") -> KpisPublic:
    """处置率, 按期处置率, 结案率, 返工率 and mean / p90 times for the cases reported in
    [start, end). Without ``end``: up to now; without ``start``: the ``cases.kpi_period``
    before ``end`` — with neither, the same period as the latest ``lifeline_kpi`` point."""
    if (start is not None and start.tzinfo is None) or (end is not None and end.tzinfo is None):
        raise HTTPException(422, "give times with a zone")
    if (start is not None and not in_ns_range(start)) or (
            end is not None and not in_ns_range(end)):
        raise HTTPException(422, f"start, end: {NS_RANGE}")
    period_ns = settings.cases.kpi_period.ns
    if end is None:
        start_ns, end_ns = kpi_window(time.time_ns(), period_ns)
    else:
        end_ns = _epoch_ns(end)
        start_ns = end_ns - period_ns
    if start is not None:
        start_ns = _epoch_ns(start)
    if end_ns <= start_ns:
        raise HTTPException(422, "end must be after start")
    items: list[Kpi] = compute(engine, start_ns, end_ns, KpiScope(by))
    from alerts.timefmt import iso  # noqa: PLC0415

    data = [KpiPublic(scope=k.scope.value, key=k.key, cases=k.cases, registered=k.registered,
                      handled=k.handled, handled_on_time=k.handled_on_time, closed=k.closed,
                      reworked=k.reworked, overdue=k.overdue, disposal_rate=k.disposal_rate,
                      on_time_rate=k.on_time_rate, close_rate=k.close_rate,
                      rework_rate=k.rework_rate, mean_dispatch_s=k.mean_dispatch_s,
                      mean_handle_s=k.mean_handle_s, mean_close_s=k.mean_close_s,
                      p90_dispatch_s=k.p90_dispatch_s, p90_handle_s=k.p90_handle_s,
                      p90_close_s=k.p90_close_s)
            for k in items]
    return KpisPublic(start=iso(start_ns) or "", end=iso(end_ns) or "", data=data,
                      count=len(data))
