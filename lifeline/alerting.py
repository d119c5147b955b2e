"""Wiring of the alerts package: configs from settings, pipeline, outbox worker, clocks."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy.engine import Engine

from alerts.cases.book import CaseBook
from alerts.cases.kpi import period_lines
from alerts.cases.model import CaseConfig, Route, StageDeadlines
from alerts.delivery.outbox import DeliveryConfig, OutboxWorker
from alerts.delivery.webhook import GuardedNotifier, HttpNotifier, Notifier
from alerts.errors import AlertsError
from alerts.lifecycle.model import AlertConfig
from alerts.lifecycle.pipeline import AlertPipeline
from alerts.lifecycle.stages.stage import DeviceStateView
from common.retry import Backoff
from devices.registry import DeviceLookup
from devices.status import LinkStatus, StatusTracker
from lifeline.leadership import NotLeader
from lifeline.notifying import notify_runtime
from lifeline.settings import Settings
from rules.model import Finding, Severity

log = logging.getLogger(__name__)

STORE_BACKOFF = Backoff(base_s=0.1, max_s=5.0)
"""Waits while the database is away: 0.1 s doubling up to 5 s."""


def alert_config(settings: Settings) -> AlertConfig:
    """Lifecycle and noise settings for :mod:`alerts`."""
    a = settings.alerts
    return AlertConfig(pending_ns=a.pending_for.ns, reopen_ns=a.reopen_window.ns,
                       resolve_delay_ns=a.resolve_delay.ns, flap_window_ns=a.flap_window.ns,
                       flap_threshold=a.flap_threshold)


def case_config(settings: Settings) -> CaseConfig:
    """Case workflow settings for :mod:`alerts`."""
    c = settings.cases
    return CaseConfig(
        auto_register=Severity(c.auto_register_severity), min_severity=Severity(c.min_severity),
        group_window_ns=c.group_window.ns, default_unit=c.default_unit,
        routes=tuple(Route(r.grid, r.device_type, r.unit) for r in c.routing),
        deadlines={k: StageDeadlines(d.registration.ns, d.dispatch.ns, d.handle.ns,
                                     d.verify.ns) for k, d in c.deadlines.items()},
        verify_after_ns=c.verify_after.ns, auto_verify=c.auto_verify, auto_close=c.auto_close,
        redispatch_on_return=c.redispatch_on_return,
    )


def alert_configs(settings: Settings) -> tuple[AlertConfig, CaseConfig]:
    """Both pipeline configs (used by ``lifeline evaluate`` to run the service's pipeline)."""
    return alert_config(settings), case_config(settings)


def delivery_config(settings: Settings) -> DeliveryConfig:
    """Retry rules of the webhook worker."""
    w = settings.webhook
    return DeliveryConfig(max_attempts=w.max_attempts, max_age_ns=w.max_age.ns,
                          base_delay_s=w.base_delay, max_delay_s=w.max_delay,
                          concurrency=w.concurrency, fallback_after_ns=w.fallback_after.ns)


class TrackerStateView:
    """:class:`~alerts.lifecycle.stages.stage.DeviceStateView` over the devices status tracker.

    Offline comes from the tracker's link state; maintenance windows are silences of kind
    ``maintenance`` and sensor faults are the device's own ``event:fault`` alerts, both
    handled inside :mod:`alerts`, so those two answers are False here.
    """

    def __init__(self, tracker: StatusTracker) -> None:
        self._tracker = tracker

    def is_offline(self, device_id: str) -> bool:
        """The tracker believes the device offline."""
        return self._tracker.state(device_id).link is LinkStatus.OFFLINE

    def in_maintenance(self, device_id: str) -> bool:
        """See the class docstring."""
        return False

    def has_sensor_fault(self, device_id: str) -> bool:
        """See the class docstring."""
        return False


class AlertsRuntime:
    """The alerts pipeline in its own thread (findings in order, clock ticks between
    them) plus the webhook outbox worker."""

    def __init__(self, settings: Settings, engine: Engine, registry: DeviceLookup,
                 write_lines: Callable[[list[str]], None],
                 devices: DeviceStateView | None = None,
                 send_guard: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self._write_lines = write_lines
        self.pipeline = AlertPipeline(engine, registry, alert_config(settings),
                                      case_config(settings), devices=devices,
                                      write_lines=write_lines)
        w = settings.webhook
        self.worker: OutboxWorker | None = None
        if w.url:
            secret = w.secret.get_secret_value()
            fallback: Notifier | None = (HttpNotifier(w.fallback_url, secret, timeout=w.timeout)
                                         if w.fallback_url else None)
            primary: Notifier = HttpNotifier(w.url, secret, timeout=w.timeout)
            if send_guard is not None:  # active/standby: only the leader sends
                primary = GuardedNotifier(primary, send_guard)
                if fallback is not None:
                    fallback = GuardedNotifier(fallback, send_guard)
            self.worker = OutboxWorker(engine, primary, fallback=fallback,
                                       config=delivery_config(settings))
        # notification channels: rows routed beside the webhook's, sent by their own worker
        # (a delivery worker of the service: lifeline.service.Service.workers)
        self.notify = notify_runtime(settings.notify, engine, registry, send_guard)
        if self.notify is not None:
            self.pipeline.cases.fanout = self.notify.router
        self._stop = threading.Event()
        # findings in order; a callable is a marker: run once everything before it is applied
        self._queue: queue.Queue[list[Finding] | Callable[[], None]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._kpi_interval_s = settings.cases.kpi_interval.seconds
        self._kpi_period_ns = settings.cases.kpi_period.ns

    def use_device_state(self, view: DeviceStateView) -> None:
        """Inhibition asks ``view`` about devices from now on."""
        self.pipeline.devices = view

    def case_book(self) -> CaseBook:
        """A case book for the API thread (writes its case lines straight to InfluxDB)."""
        return CaseBook(self.pipeline.cases.config, lambda line: self._write_lines([line]),
                        lock=self.pipeline.cases.lock, fanout=self.pipeline.cases.fanout)

    def wake(self) -> None:
        """New outbox rows were committed."""
        if self.worker is not None:
            self.worker.wake()
        if self.notify is not None:
            self.notify.worker.wake()

    def start(self) -> None:
        """Start the outbox worker and the alerts thread."""
        if self.worker is not None:
            self.worker.start()
        self._thread.start()

    def process(self, findings: Sequence[Finding]) -> None:
        """Hand findings to the alerts thread (the ingest thread never waits on the
        database for alerts)."""
        if findings:
            self._queue.put(list(findings))

    def after_applied(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (in the alerts thread) once every finding handed over before
        it is applied — committed to the database, with its outbox rows."""
        self._queue.put(callback)

    def backlog(self) -> int:
        """Finding batches waiting for the alerts thread."""
        return self._queue.qsize()

    def _apply(self, findings: list[Finding]) -> None:
        """Apply findings; while the database is away, retry (holding this thread) so no
        transition is lost — when stopping, give up after 30 s and log what is dropped."""
        failures = 0
        give_up_at: float | None = None
        i = 0
        while i < len(findings):
            notified = self.pipeline.notified
            try:
                self.pipeline.process(findings[i:i + 1])
            except NotLeader as exc:  # active/standby: the next leader evaluates them again
                log.error("alerts: %d findings not applied, this node no longer leads: %s",
                          len(findings) - i, exc)
                return
            except AlertsError as exc:
                if self._stop.is_set():
                    give_up_at = give_up_at or time.monotonic() + 30
                    if time.monotonic() > give_up_at:
                        log.error("alerts: dropping %d findings at shutdown: %s",
                                  len(findings) - i, exc)
                        return
                log.error("alerts store unavailable (%d findings waiting): %s",
                          len(findings) - i, exc)
                failures += 1
                time.sleep(STORE_BACKOFF.delay(failures))
                continue
            i += 1
            failures = 0
            if self.pipeline.notified != notified:
                self.wake()  # committed outbox rows go out now, not after the whole batch

    def _run(self) -> None:
        """Findings as they come, the clock every ``tick_interval``; drains on stop."""
        interval = self.settings.alerts.tick_interval
        next_tick = time.monotonic() + interval
        next_kpi = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = None
            batch: list[Finding] | None = None
            if callable(item):
                _call(item)
            else:
                batch = item
            if batch:
                self._apply(batch)
                self.wake()
            elif not batch and self._stop.is_set() and self._queue.empty():
                return
            if time.monotonic() < next_tick:
                continue
            next_tick = time.monotonic() + interval
            try:
                self.pipeline.tick()
                if time.monotonic() >= next_kpi:
                    next_kpi = time.monotonic() + self._kpi_interval_s
                    self.write_kpis()
            except AlertsError as exc:
                log.error("alerts clock: %s", exc)
            except Exception:
                log.exception("alerts clock failed")
            self.wake()

    def write_kpis(self) -> None:
        """Write ``lifeline_kpi`` lines for the KPI period up to now (the period
        ``/api/v1/kpi`` answers for without ``start`` and ``end``)."""
        lines = period_lines(self.pipeline.engine, time.time_ns(), self._kpi_period_ns)
        if lines:
            self._write_lines(lines)

    def stop(self, timeout: float = 10.0) -> None:
        """Apply the findings still queued, tick once more, then let the worker send
        what is due (within ``timeout``)."""
        self._stop.set()
        self._queue.put([])  # wake the thread
        if self._thread.is_alive():
            self._thread.join(60)
        else:  # never started: apply here
            while not self._queue.empty():
                item = self._queue.get()
                if callable(item):
                    _call(item)
                else:
                    self._apply(item)
        try:
            self.pipeline.tick()
        except AlertsError as exc:
            log.error("alerts: %s", exc)
        if self.worker is not None:
            self.worker.stop(timeout)


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        log.exception("alerts: marker callback failed")
