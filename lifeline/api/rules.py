"""``/api/v1/rules``: the loaded rules, and reloading the rule files."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from lifeline.api.deps import Admin, ApiContext, Ctx, Viewer
from rules.engine import RuleEngine
from rules.errors import RulesError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/rules", tags=["rules"])
UNPROCESSABLE = 422


class RulePublic(BaseModel):
    """One loaded rule: its definition plus how many series it watches and fires for."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    severity: str
    description: str
    definition: dict[str, Any]
    series: int
    firing: int


class RulesPublic(BaseModel):
    """The loaded rules, in file order."""

    data: list[RulePublic]
    count: int
    late_readings: int
    evaluated_readings: int
    reloads: int


class RulesReloadPublic(BaseModel):
    """Result of a reload: rules kept with their state and rules new or changed."""

    kept: int
    new: int
    count: int


def _engine(ctx: ApiContext) -> RuleEngine:
    engine = ctx.rule_engine
    if engine is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the rule engine is not running")
    return engine


@router.get("", response_model=RulesPublic,
            responses={503: {"description": "the rule engine is not running"}})
def list_rules(ctx: Ctx, _: Viewer) -> RulesPublic:
    """Every loaded rule with the number of series it applies to and is firing for."""
    engine = _engine(ctx)
    data = [
        RulePublic(id=d["rule"].id, kind=d["rule"].kind, severity=d["rule"].severity.value,
                   description=d["rule"].description,
                   definition=d["rule"].model_dump(mode="json", by_alias=True),
                   series=d["series"], firing=d["firing"])
        for d in engine.describe()
    ]
    return RulesPublic(data=data, count=len(data), late_readings=engine.late,
                       evaluated_readings=engine.evaluated, reloads=engine.reloads)


@router.post("/reload", response_model=RulesReloadPublic,
             responses={UNPROCESSABLE: {"description": "a rule file is invalid; nothing changed"},
                        503: {"description": "the rule engine is not running"}})
async def reload_rules(ctx: Ctx, principal: Admin) -> RulesReloadPublic:
    """Load the rule files again (like SIGHUP); unchanged rules keep their state."""
    reload = ctx.rules_reload
    if reload is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the rule engine is not running")
    try:
        kept, new = await run_in_threadpool(reload)
    except RulesError as exc:
        log.warning("rule reload by %s refused: %s", principal.name, exc)
        raise HTTPException(UNPROCESSABLE, str(exc)) from exc
    log.info("rules reloaded by %s: %d kept, %d new", principal.name, kept, new)
    return RulesReloadPublic(kept=kept, new=new, count=kept + new)
