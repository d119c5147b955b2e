"""``lifeline serve`` with ``[ha] enabled``: one node of an active/standby group.

Every node answers the API (reads from the shared database; writes on a standby are
forwarded to the leader, :mod:`lifeline.api.forward`) and runs the elector
(:mod:`lifeline.leadership`). A standby does nothing else. When the elector wins the
lease, the node builds the :class:`~lifeline.service.Service` with a fenced database
engine (:mod:`lifeline.fencing`) — which loads the rule state, the recent
de-duplication keys, device status and the spool the last leader left in the
database — starts it, and only then connects to the broker with the service's client
id and persistent session, receiving what the broker queued meanwhile.

A node that loses the lease (it was frozen, cut off from the database, or its renewals
failed for lease − lease/5) exits at once with :data:`EXIT_DEMOTED`, acknowledging and
writing nothing more: the supervisor (systemd ``Restart=on-failure``) starts it again
as a standby. A clean stop (SIGTERM) of the leader drains as usual and releases the
lease, so a standby takes over at its next poll. See docs/operations.md "High
availability".
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, cast

import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from alerts.lifecycle.model import SERVICE_RULE_PREFIX
from alerts.lifecycle.store import open_alert_series
from common.severity import Severity
from devices.catalogue import Catalogue
from devices.registry import read_inventory
from devices.store import DeviceStore
from lifeline.app import ApiServer, ReadyCheck, create_app
from lifeline.db import create_db_engine, open_database
from lifeline.fencing import install_fence
from lifeline.leadership import LeaseError, NotLeader, elector_from_settings
from lifeline.metrics import HaCollector
from lifeline.scheduler import PeriodicTask
from lifeline.service import LeaderTerm, Service, database_check
from lifeline.settings import Settings
from rules.model import Finding, FindingState

log = logging.getLogger(__name__)

EXIT_DEMOTED: Final = 75
"""Exit code of a node that lost the lease (EX_TEMPFAIL): start it again as standby."""

TAKEOVER_RULE: Final = SERVICE_RULE_PREFIX + "ha_takeover"
TAKEOVER_RESOLVE_S: Final = 60.0  # the takeover alert resolves after a minute of leading

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class SwitchableApp:
    """An ASGI app that hands every request to :attr:`target`: the standby's app first,
    the leader's (with the service's runtime objects) from the election on — the API
    keeps its port across the change."""

    def __init__(self, target: FastAPI) -> None:
        self.target = target

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.target(scope, receive, send)


def fenced_engine(url: str, fence: Callable[[], Any], idle_s: float) -> Engine:
    """The leader's engine: every write transaction checks the fence; on PostgreSQL a
    transaction left idle (a frozen process) is ended by the server after ``idle_s``, so
    its lock on the lease row cannot hold a takeover back."""
    if url.startswith("postgresql"):
        ms = max(1, int(idle_s * 1000))
        engine = sa.create_engine(url, future=True, pool_pre_ping=True, connect_args={
            "connect_timeout": 5,
            "options": f"-c idle_in_transaction_session_timeout={ms}",
            "keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1,
            "keepalives_count": 3})
    else:
        engine = create_db_engine(url)
    install_fence(engine, fence)
    return engine


class HaNode:
    """One node: API + elector; the service while it leads (:meth:`run`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.plain = open_database(settings.database_url)  # migrations; reads of the API
        self._import_inventory()
        self.elector = elector_from_settings(settings, on_elected=self._on_elected,
                                             on_demoted=self._on_demoted)
        self.node_id = self.elector.lease.node_id
        self.engine = fenced_engine(settings.database_url, self.elector.fence,
                                    settings.ha.lease.seconds / 3)
        self.service: Service | None = None
        self._elected = threading.Event()
        self._serving = False
        self._stopping = False
        self._previous_holder: str | None = None
        self._token = 0
        self._leader_url: tuple[float, str | None] = (0.0, None)
        self.takeovers = 0  # elections that took the lease from a node that did not release
        self.collector = HaCollector(self.elector)
        self.app = SwitchableApp(create_app(
            settings, self.plain, self._standby_checks(), ha=self, collectors=[self.collector]))
        self.api = (ApiServer(cast(FastAPI, self.app), settings.api.host, settings.api.port)
                    if settings.api.enabled else None)

    # -- the API's view (lifeline.api.deps.HaView) ----------------------------------------

    def is_leader(self) -> bool:
        """This node leads and its service is running (writes are taken here)."""
        return self._serving and self.elector.is_leader

    def leader_api_url(self) -> str | None:
        """The API of the node holding the lease (cached for a second)."""
        at, url = self._leader_url
        if time.monotonic() - at < 1.0:
            return url
        try:
            url = self.elector.lease.leader_api_url()
        except LeaseError as exc:
            log.debug("leader API URL unknown: %s", exc)
            url = None
        self._leader_url = (time.monotonic(), url)
        return url

    def role(self) -> str:
        """``leader`` or ``standby``."""
        return "leader" if self.is_leader() else "standby"

    # -- lifecycle ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        """Serve the API, wait for the lease, lead until ``stop``; the exit code."""
        if self.api is not None:
            self.api.start()
        self.elector.start()
        log.info("standby: node %s of group %s waiting for the lease",
                 self.node_id, self.settings.ha.group)
        while not stop.is_set() and not self._elected.is_set():
            stop.wait(0.1)
        if stop.is_set() and not self._elected.is_set():
            self._stop()
            return 0
        try:
            service = self._lead()
        except NotLeader as exc:
            self._exit_demoted(f"lost the lease while starting: {exc}")
        except BaseException:
            log.error("node %s cannot lead: releasing the lease", self.node_id)
            self._stop()  # another node may be luckier (or the supervisor retries)
            raise
        self.service = service
        service.run(stop)  # until SIGTERM; then drains (fenced) and shuts down
        self._stop()
        return 0

    def _lead(self) -> Service:
        settings = self.settings
        term = LeaderTerm(self.node_id, settings.ha.group, self.engine,
                          lambda: self.elector.is_leader)
        started = time.monotonic()
        service = Service(settings, term)
        service.start(api=False)
        self.app.target = service.create_app(self.engine, ha=self,
                                             extra_collectors=[self.collector])
        self._serving = True
        self._resolve_old_takeover_alerts(service)
        if self._previous_holder is not None:
            self.takeovers += 1
            log.warning("node %s took over from %s (took %.1f s to start)", self.node_id,
                        self._previous_holder, time.monotonic() - started)
            service.alerts.process([self._takeover_finding(FindingState.FIRING)])
            resolve_at = [time.monotonic() + TAKEOVER_RESOLVE_S]

            def resolve() -> None:
                if time.monotonic() >= resolve_at[0] and self.is_leader():
                    service.alerts.process([self._takeover_finding(FindingState.RESOLVED)])
                    resolve_at[0] = float("inf")

            service.tasks.add(PeriodicTask("ha-takeover-resolve", 10.0, resolve))
        log.info("serving: leader %s (token %s), mqtt %s:%d prefix %r, influx %s db %s",
                 self.node_id, self.elector.token, settings.mqtt.host, settings.mqtt.port,
                 settings.mqtt.prefix, settings.influx.url, settings.influx.database)
        return service

    def _takeover_finding(self, state: FindingState, device: str | None = None) -> Finding:
        """The takeover alert of this term: device ``<node id>/token-<token>``, so that
        every takeover is an alert of its own."""
        device = device or f"{self.node_id}/token-{self._token}"
        return Finding(rule_id=TAKEOVER_RULE, device_id=device,
                       metric="ha_takeover", state=state, severity=Severity.WARNING,
                       ts_ns=time.time_ns(), value=float(self.takeovers))

    def _resolve_old_takeover_alerts(self, service: Service) -> None:
        """Takeover alerts a node left open (it lost the lease within its first minute):
        resolved, so that every takeover fires one of its own."""
        try:
            with self.plain.connect() as conn:
                open_series = open_alert_series(conn)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("cannot read open takeover alerts: %s", exc)
            return
        stale = [self._takeover_finding(FindingState.RESOLVED, device)
                 for rule, device, _ in open_series if rule == TAKEOVER_RULE]
        if stale:
            service.alerts.process(stale)

    def _stop(self) -> None:
        self._stopping = True
        self._serving = False
        self.elector.stop(release=True)  # a standby takes over at its next poll
        if self.api is not None:
            self.api.stop()

    def _on_elected(self, token: int) -> None:
        self._previous_holder = self.elector.previous_holder
        self._token = token
        self._elected.set()

    def _on_demoted(self, reason: str) -> None:
        if self._stopping:
            return
        self._exit_demoted(reason)

    def _exit_demoted(self, reason: str) -> Any:
        """Stop at once: nothing more is written or acknowledged by this process."""
        self._serving = False
        log.error("node %s is no longer the leader (%s): exiting with %d so that the "
                  "supervisor starts it again as a standby", self.node_id, reason,
                  EXIT_DEMOTED)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):  # exiting anyway
                handler.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(EXIT_DEMOTED)

    def _standby_checks(self) -> dict[str, ReadyCheck]:
        def lease() -> tuple[bool, str]:
            remaining = self.elector.remaining_s()
            if self.is_leader():
                return True, f"leader, {remaining:.1f}s left"
            return True, "standby"

        return {"database": database_check(self.plain), "lease": lease}

    def _import_inventory(self) -> None:
        s = self.settings
        if not s.devices.inventory:
            return
        DeviceStore(self.plain).upsert_many(read_inventory(
            s.devices.inventory, Catalogue.with_file(s.devices.catalogue)))


__all__ = ["EXIT_DEMOTED", "TAKEOVER_RULE", "HaNode", "SwitchableApp", "fenced_engine"]
