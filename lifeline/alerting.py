"""Wiring of the alerts package: configs from settings, pipeline, outbox worker, clocks."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy.engine import Engine

from alerts.cases import CaseBook
from alerts.errors import AlertsError
from alerts.kpi import period_lines
from alerts.model import AlertConfig, CaseConfig, Route, StageDeadlines
from alerts.noise import DeviceStateView
from alerts.outbox import DeliveryConfig, OutboxWorker
from alerts.pipeline import AlertPipeline
from alerts.webhook import HttpNotifier
from devices.registry import DeviceLookup
from devices.status import LinkStatus, StatusTracker
from lifeline.settings import Settings
from rules.model import Finding, Severity, parse_duration_ns

log = logging.getLogger(__name__)


def _ns(value: str) -> int:
    return parse_duration_ns(value) if value else 0


def alert_config(settings: Settings) -> AlertConfig:
    """Lifecycle and noise settings for :mod:`alerts`."""
    a = settings.alerts
    return AlertConfig(pending_ns=_ns(a.pending_for), reopen_ns=_ns(a.reopen_window),
                       resolve_delay_ns=_ns(a.resolve_delay), flap_window_ns=_ns(a.flap_window),
                       flap_threshold=a.flap_threshold)


def case_config(settings: Settings) -> CaseConfig:
    """Case workflow settings for :mod:`alerts`."""
    c = settings.cases
    return CaseConfig(
        auto_register=Severity(c.auto_register_severity), min_severity=Severity(c.min_severity),
        group_window_ns=_ns(c.group_window), default_unit=c.default_unit,
        routes=tuple(Route(r.grid, r.device_type, r.unit) for r in c.routing),
        deadlines={k: StageDeadlines(_ns(d.registration), _ns(d.dispatch), _ns(d.handle),
                                     _ns(d.verify)) for k, d in c.deadlines.items()},
        verify_after_ns=_ns(c.verify_after), auto_verify=c.auto_verify, auto_close=c.auto_close,
        redispatch_on_return=c.redispatch_on_return,
    )


def alert_configs(settings: Settings) -> tuple[AlertConfig, CaseConfig]:
    """Both pipeline configs (used by ``lifeline evaluate`` to run the service's pipeline)."""
    return alert_config(settings), case_config(settings)


def delivery_config(settings: Settings) -> DeliveryConfig:
    """Retry rules of the webhook worker."""
    w = settings.webhook
    return DeliveryConfig(max_attempts=w.max_attempts, max_age_ns=_ns(w.max_age),
                          base_delay_s=w.base_delay, max_delay_s=w.max_delay,
                          concurrency=w.concurrency, fallback_after_ns=_ns(w.fallback_after))


class TrackerStateView:
    """:class:`~alerts.noise.DeviceStateView` over the devices status tracker.

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
                 devices: DeviceStateView | None = None) -> None:
        self.settings = settings
        self._write_lines = write_lines
        self.pipeline = AlertPipeline(engine, registry, alert_config(settings),
                                      case_config(settings), devices=devices,
                                      write_lines=write_lines)
        w = settings.webhook
        self.worker: OutboxWorker | None = None
        if w.url:
            secret = w.secret.get_secret_value()
            fallback = (HttpNotifier(w.fallback_url, secret, timeout=w.timeout)
                        if w.fallback_url else None)
            self.worker = OutboxWorker(engine, HttpNotifier(w.url, secret, timeout=w.timeout),
                                       fallback=fallback, config=delivery_config(settings))
        self._stop = threading.Event()
        self._queue: queue.Queue[list[Finding]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._kpi_interval_s = _ns(settings.cases.kpi_interval) / 1e9
        self._kpi_period_ns = _ns(settings.cases.kpi_period)

    def use_device_state(self, view: DeviceStateView) -> None:
        """Inhibition asks ``view`` about devices from now on."""
        self.pipeline.devices = view

    def case_book(self) -> CaseBook:
        """A case book for the API thread (writes its case lines straight to InfluxDB)."""
        return CaseBook(self.pipeline.cases.config, lambda line: self._write_lines([line]),
                        lock=self.pipeline.cases.lock)

    def wake(self) -> None:
        """New outbox rows were committed."""
        if self.worker is not None:
            self.worker.wake()

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

    def backlog(self) -> int:
        """Finding batches waiting for the alerts thread."""
        return self._queue.qsize()

    def _apply(self, findings: list[Finding]) -> None:
        """Apply findings; while the database is away, retry (holding this thread) so no
        transition is lost — when stopping, give up after 30 s and log what is dropped."""
        delay = 0.1
        give_up_at: float | None = None
        i = 0
        while i < len(findings):
            notified = self.pipeline.notified
            try:
                self.pipeline.process(findings[i:i + 1])
            except AlertsError as exc:
                if self._stop.is_set():
                    give_up_at = give_up_at or time.monotonic() + 30
                    if time.monotonic() > give_up_at:
                        log.error("alerts: dropping %d findings at shutdown: %s",
                                  len(findings) - i, exc)
                        return
                log.error("alerts store unavailable (%d findings waiting): %s",
                          len(findings) - i, exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            i += 1
            delay = 0.1
            if self.pipeline.notified != notified:
                self.wake()  # committed outbox rows go out now, not after the whole batch

    def _run(self) -> None:
        """Findings as they come, the clock every ``tick_interval``; drains on stop."""
        interval = self.settings.alerts.tick_interval
        next_tick = time.monotonic() + interval
        next_kpi = time.monotonic()
        while True:
            try:
                batch = self._queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                batch = None
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
                self._apply(self._queue.get())
        try:
            self.pipeline.tick()
        except AlertsError as exc:
            log.error("alerts: %s", exc)
        if self.worker is not None:
            self.worker.stop(timeout)
