"""FastAPI app assembly: one router per domain package, shared dependencies."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from lifeline.api import alerts as alerts_api
from lifeline.api import cases as cases_api
from lifeline.api import deliveries as deliveries_api
from lifeline.api import devices as devices_api
from lifeline.api import health
from lifeline.api import ingest as ingest_api
from lifeline.api import notify as notify_api
from lifeline.api import rules as rules_api
from lifeline.api import schema as schema_api
from lifeline.api import silences as silences_api
from lifeline.api.deps import ApiContext, HaView, ReadyCheck
from lifeline.api.forward import FORWARD_ERRORS, TIMEOUT_S, ForwardMiddleware, forwarded
from lifeline.api.limits import BodyLimitMiddleware
from lifeline.auth import TokenStore
from lifeline.metrics import StateCollector
from lifeline.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from alerts.cases.book import CaseBook
    from devices.store import CachedRegistry
    from rules.engine import RuleEngine

__all__ = ["ApiServer", "ReadyCheck", "create_app"]

log = logging.getLogger(__name__)
# Documented on every route behind a token (schemathesis checks every status is documented).
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body cannot be read (not UTF-8)"},
    401: {"description": "missing or invalid bearer token"},
    403: {"description": "the token's role may not do this"},
    413: {"description": "request body over api.max_body_bytes"},
}


def create_app(settings: Settings, engine: Engine,
               ready_checks: dict[str, ReadyCheck] | None = None, *,
               device_cache: CachedRegistry | None = None,
               rule_engine: RuleEngine | None = None,
               rules_reload: Callable[[], tuple[int, int]] | None = None,
               case_book: CaseBook | None = None,
               outbox_wake: Callable[[], None] | None = None,
               collectors: Iterable[Collector] = (),
               ha: HaView | None = None,
               forward_timeout_s: float = TIMEOUT_S) -> FastAPI:
    """The API app; ``ready_checks`` feed ``/readyz``. The keyword arguments are the
    service's runtime objects (see :class:`~lifeline.api.deps.ApiContext`);
    ``collectors`` join the app's metrics registry. With ``ha`` (active/standby HA),
    ``/readyz`` names the node's role and, while this node is not the leader, writes are
    forwarded to the leader (:mod:`lifeline.api.forward`; ``forward_timeout_s``: how long
    the leader may take to answer)."""
    # /docs, /redoc and /openapi.json need a viewer token (lifeline.api.schema): only
    # /healthz and /readyz are open.
    app = FastAPI(title="citylifeline", version="0.1.0", openapi_url=None, docs_url=None,
                  redoc_url=None, dependencies=[Depends(schema_api.reject_unknown_query)])
    # the app's own metrics (database state; the service adds its runtime figures)
    metrics_registry = CollectorRegistry(auto_describe=False)
    metrics_registry.register(StateCollector(engine))
    for collector in collectors:
        metrics_registry.register(collector)
    app.state.context = ApiContext(
        settings=settings, engine=engine, tokens=TokenStore(settings.api.tokens),
        metrics_registry=metrics_registry, ready_checks=dict(ready_checks or {}),
        device_cache=device_cache, rule_engine=rule_engine, rules_reload=rules_reload,
        case_book=case_book, outbox_wake=outbox_wake, ha=ha)
    app.include_router(health.router)
    app.include_router(devices_api.router, responses=AUTH_ERRORS)
    app.include_router(ingest_api.router, responses=AUTH_ERRORS)
    app.include_router(alerts_api.router, responses=AUTH_ERRORS)
    app.include_router(silences_api.router, responses=AUTH_ERRORS)
    app.include_router(cases_api.router, responses=AUTH_ERRORS)
    app.include_router(deliveries_api.router, responses=AUTH_ERRORS)
    app.include_router(notify_api.router, responses=AUTH_ERRORS)
    app.include_router(rules_api.router, responses=AUTH_ERRORS)
    app.include_router(schema_api.router)
    schema_api.install_openapi(app)
    if ha is not None:
        _document_forwarding(app)
        # inside the body limit: an oversized body is refused before anything is sent
        app.add_middleware(ForwardMiddleware, ha=ha, timeout_s=forward_timeout_s)
    app.add_middleware(
        BodyLimitMiddleware, default=settings.api.max_body_bytes,
        per_path={"/api/v1/devices/import": (settings.api.max_import_bytes,
                                             "api.max_import_bytes")})
    return app


def _document_forwarding(app: FastAPI) -> None:
    """Add the forwarding middleware's answers to every write route of the schema."""
    build = app.openapi

    def with_forwarding() -> dict[str, Any]:
        schema = build()
        for path, item in schema.get("paths", {}).items():
            for method, op in item.items():
                if isinstance(op, dict) and forwarded(method.upper(), path):
                    responses = op.setdefault("responses", {})
                    for code, doc in FORWARD_ERRORS.items():
                        responses.setdefault(str(code), dict(doc))
        return schema

    app.openapi = with_forwarding  # type: ignore[method-assign]


class ApiServer:
    """Runs the app with uvicorn in a background thread."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    @property
    def port(self) -> int | None:
        """The bound port once started (useful with port 0)."""
        for server in getattr(self._server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return None

    def stop(self) -> None:
        """Stop serving."""
        self._server.should_exit = True
        self._thread.join(10)
