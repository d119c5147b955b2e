"""Acknowledge from a notification: the signed link in a message (``token``: HMAC-signed,
expiring, single use) acknowledges the alert or accepts the case. ``GET`` shows a page
with one button (chat apps open links to preview them: a GET never acts); ``POST`` acts.

The token is the authentication (like the dispatch system's signed callback); without
one, the routes need a bearer token (viewer for GET, operator for POST) and answer 422:
with a token, operators use the alert and case routes."""

from __future__ import annotations

import html
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from alerts.cases.actions import apply_action
from alerts.cases.book import CaseBook
from alerts.cases.workflow import Action
from alerts.errors import IllegalTransitionError, NotFoundError
from alerts.lifecycle.ops import ack_alert
from alerts.lifecycle.store import get_alert
from alerts.notify.links import AckToken, LinkError, claim, record
from lifeline.alerting import case_config
from lifeline.api.deps import ApiContext, Ctx
from lifeline.auth import Role
from lifeline.notifying import link_signer

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/notify", tags=["notify"])
_bearer = HTTPBearer(auto_error=False)
ACTOR = "notify-link"
Token = Annotated[str | None, Query(max_length=600, description="the signed link token")]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _page(title: str, body: str, code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head><body><h3>{html.escape(title)}</h3>"
        f"{body}</body></html>", status_code=code)


def _verified(ctx: ApiContext, token: str | None, credentials: HTTPAuthorizationCredentials
              | None, role: Role) -> AckToken:
    """The link token, verified; without one, the bearer check of ``role`` then 422."""
    if token is None:
        who = ctx.tokens.authenticate(credentials.credentials) if credentials else None
        if who is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing link or bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        if who.role < role:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"{role.name.lower()} required")
        raise HTTPException(422,
                            "token: the signed link token is required here; use the alert "
                            "and case routes with a bearer token")
    signer = link_signer(ctx.settings.notify)
    if signer is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "acknowledge links are not configured")
    try:
        return signer.verify(token, int(time.time()))
    except LinkError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from exc


@router.get("/ack", response_class=HTMLResponse,
            responses={401: {"description": "bad, forged or expired link"},
                       404: {"description": "acknowledge links are not configured"}})
def ack_page(ctx: Ctx, credentials: Bearer, token: Token = None) -> HTMLResponse:
    """The confirmation page of an acknowledge link (one button; nothing happens yet)."""
    tok = _verified(ctx, token, credentials, Role.VIEWER)
    what = f"告警 #{tok.object_id}" if tok.kind == "alert" else f"案件 #{tok.object_id}"
    verb = "确认告警" if tok.kind == "alert" else "接单"
    action = f"/api/v1/notify/ack?token={html.escape(token or '', quote=True)}"
    return _page(f"{what}：{verb}",
                 f'<form method="post" action="{action}">'
                 f'<button type="submit" style="font-size:1.4em">{verb}</button></form>')


def _book(ctx: ApiContext) -> CaseBook:
    return ctx.case_book or CaseBook(case_config(ctx.settings), lambda line: None)


def _act(ctx: ApiContext, tok: AckToken, now: int) -> tuple[int, str]:
    if tok.kind == "alert":
        with ctx.engine.connect() as conn:
            alert = get_alert(conn, tok.object_id)
        if alert.acked_ns is not None:
            return 200, f"告警 #{alert.id} 已由 {alert.acked_by} 确认"
        ack_alert(ctx.engine, tok.object_id, ACTOR, "acknowledged from a notification", now)
        return 200, f"告警 #{tok.object_id} 已确认"
    try:
        apply_action(ctx.engine, _book(ctx), tok.object_id, Action.ACCEPT, ACTOR, now,
                     note="accepted from a notification")
    except IllegalTransitionError as exc:
        return 409, f"案件 #{tok.object_id} 当前状态 {exc.state}，无需接单"
    ctx.wake_outbox()
    return 200, f"案件 #{tok.object_id} 已接单"


@router.post("/ack", response_class=HTMLResponse,
             responses={401: {"description": "bad, forged or expired link"},
                        404: {"description": "no such alert or case; links not configured"},
                        409: {"description": "the case cannot be accepted in its state"}})
def ack(ctx: Ctx, credentials: Bearer, token: Token = None) -> HTMLResponse:
    """Acknowledge the alert / accept the case of the link, once: the link is used up by
    its first use, and a second use answers what the first did."""
    tok = _verified(ctx, token, credentials, Role.OPERATOR)
    now = time.time_ns()
    before = claim(ctx.engine, tok, now)
    if before is not None:
        return _page("此链接已使用", f"<p>{html.escape(before or '处理中')}</p>")
    try:
        code, outcome = _act(ctx, tok, now)
    except NotFoundError as exc:
        code, outcome = 404, str(exc)
    record(ctx.engine, tok, outcome)
    log.info("notify link: %s %d -> %s", tok.kind, tok.object_id, code)
    return _page(outcome, "", code)
