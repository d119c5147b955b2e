"""FastAPI dependencies as ``Annotated`` aliases; the app's runtime objects in one
typed :class:`ApiContext` (``Ctx``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Protocol

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from lifeline.auth import Principal, Role, TokenStore
from lifeline.settings import Settings

if TYPE_CHECKING:
    from alerts.cases.book import CaseBook
    from devices.catalogue import Catalogue
    from devices.store import CachedRegistry
    from rules.engine import RuleEngine

_bearer = HTTPBearer(auto_error=False)

ReadyCheck = Callable[[], tuple[bool, str]]


class HaView(Protocol):
    """Leadership as the API sees it (active/standby HA, docs/operations.md): a node
    that is not leader forwards writes to the leader's advertised URL."""

    @property
    def node_id(self) -> str:
        """This node's id (``ha.node_id``)."""
        ...

    def is_leader(self) -> bool:
        """Whether this node leads now (cheap: no database round trip)."""
        ...

    def leader_api_url(self) -> str | None:
        """The API URL the current leader advertised; None when there is no leader or it
        advertised none (may query the database: blocking)."""
        ...


@dataclass(slots=True)
class ApiCaches:
    """What the API computes once and keeps (filled on first use)."""

    catalogue: Catalogue | None = None
    # (METHOD, path) → query parameter name → takes a list
    query_names: dict[tuple[str, str], dict[str, bool]] | None = None


@dataclass(frozen=True, slots=True)
class ApiContext:
    """Everything the routes use at run time, set once by :func:`lifeline.app.create_app`.

    The service parts are None when the app runs without the service (tests, tools):
    the rule routes then answer 503, case actions write no lines, nothing is woken.
    """

    settings: Settings
    engine: Engine
    tokens: TokenStore
    metrics_registry: CollectorRegistry  # the app's own (database state, runtime figures)
    ready_checks: Mapping[str, ReadyCheck] = field(default_factory=dict)
    device_cache: CachedRegistry | None = None  # refreshed on device changes
    rule_engine: RuleEngine | None = None  # GET /api/v1/rules
    rules_reload: Callable[[], tuple[int, int]] | None = None  # POST /api/v1/rules/reload
    case_book: CaseBook | None = None  # case actions (writes lifeline_case lines)
    outbox_wake: Callable[[], None] | None = None  # new outbox rows were committed
    ha: HaView | None = None  # active/standby HA: role on /readyz, writes forwarded
    caches: ApiCaches = field(default_factory=ApiCaches)

    def wake_outbox(self) -> None:
        """Tell the webhook worker about new outbox rows (no-op without the service)."""
        if self.outbox_wake is not None:
            self.outbox_wake()


def get_context(request: Request) -> ApiContext:
    """The app's :class:`ApiContext`."""
    ctx: ApiContext = request.app.state.context
    return ctx


Ctx = Annotated[ApiContext, Depends(get_context)]


def get_settings(ctx: Ctx) -> Settings:
    """The settings the app was built with."""
    return ctx.settings


def get_engine(ctx: Ctx) -> Engine:
    """The service database engine."""
    return ctx.engine


def _principal(
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = ctx.tokens.authenticate(credentials.credentials) if credentials else None
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or invalid bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    return principal


def _require(role: Role):  # type: ignore[no-untyped-def]
    def check(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        if principal.role < role:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"role {principal.role.name.lower()} may not do this; "
                                f"{role.name.lower()} required")
        return principal
    return check


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
Viewer = Annotated[Principal, Depends(_require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(_require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(_require(Role.ADMIN))]
