"""The persistent webhook outbox and its delivery worker.

Events are rows of ``webhook_outbox`` written in the same transaction as the change they
announce. The worker sends due rows with the notifier contract of :mod:`alerts.delivery.webhook`
(signed, with a delivery id that never changes), retries timeouts, connection errors,
5xx, 408 and 429 with capped exponential backoff and jitter, and dead-letters a row on a
permanent failure (other 4xx) or past ``max_age`` (and after ``max_attempts``, when that
is set: 0, the default, retries until ``max_age``). A row that was in flight when the
service died is still ``pending`` and is sent again after a restart: at least once,
always with the same delivery id. When the primary endpoint has been failing for
``fallback_after``, deliveries go to the fallback endpoint (the primary is probed now
and then and takes over again when it answers). When the primary answers again after failures,
every row backing off is due at once (but those it answered 429), so an outage does not
leave the first events after it waiting out a long backoff.

Order: the rows of one ``order_key`` (a case; an alert event without a case by its alert,
see :func:`alerts.delivery.store.order_key`) are delivered one after the other in id order, on
whichever endpoint: a row is not started while an earlier row of its key is pending (in
flight, due or backing off). A dead row no longer holds its key up; a resent row takes its
old place again. Rows of different keys go concurrently (``concurrency`` per endpoint).
The rule is read from the database on every pass, so it holds across restarts.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import sqlalchemy as sa
from prometheus_client import Histogram
from sqlalchemy.engine import Engine

from alerts.delivery.model import Delivery, DeliveryStatus
from alerts.delivery.store import delivery_from_row, outbox
from alerts.delivery.webhook import Notifier, WebhookEvent
from alerts.errors import DeliveryError, StoreError
from common.retry import Backoff

log = logging.getLogger(__name__)

# seconds from an event entering the outbox to its delivery (retries included)
DELIVERY_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                            900.0, 3600.0, float("inf"))


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """Retry rules of the delivery worker."""

    max_attempts: int = 0  # 0: no limit, retry until max_age
    max_age_ns: int = 24 * 3600 * 10**9
    base_delay_s: float = 0.5
    max_delay_s: float = 300.0
    poll_interval_s: float = 0.2
    concurrency: int = 4
    fallback_after_ns: int = 300 * 10**9

    @property
    def backoff(self) -> Backoff:
        """The retry delays: doubling from ``base_delay_s`` up to ``max_delay_s``, with
        jitter in [50 %, 100 %]."""
        return Backoff(base_s=self.base_delay_s, max_s=self.max_delay_s, jitter=(0.5, 1.0))


@dataclass(slots=True)
class OutboxStats:
    """Counters of the worker since start."""

    delivered: int = 0
    failed_attempts: int = 0
    dead: int = 0
    via_fallback: int = 0


def backoff_s(attempt: int, config: DeliveryConfig, rng: random.Random) -> float:
    """Exponential delay after ``attempt`` failures, capped at ``max_delay_s``, with
    jitter in [50 %, 100 %]."""
    return config.backoff.delay(attempt, rng)


def give_up_after_s(config: DeliveryConfig) -> tuple[float, float] | None:
    """Shortest and longest time from a first failure to the last of ``max_attempts``
    attempts (None without a limit)."""
    if config.max_attempts <= 0:
        return None
    full = sum(config.backoff.nominal(a) for a in range(1, config.max_attempts))
    return full / 2, full


def ready_condition(now_ns: int, target: str = "") -> sa.ColumnElement[bool]:
    """Rows of ``target`` ("" = the dispatch webhook) that may be started at ``now_ns``:
    pending, due, and no earlier row of the same target and order key pending (an empty
    key has no order)."""
    earlier = outbox.alias("earlier")
    blocked = sa.exists().where(earlier.c.order_key == outbox.c.order_key,
                                earlier.c.target == outbox.c.target,
                                earlier.c.status == DeliveryStatus.PENDING.value,
                                earlier.c.id < outbox.c.id)
    return sa.and_(outbox.c.target == target,
                   outbox.c.status == DeliveryStatus.PENDING.value,
                   outbox.c.next_attempt_ns <= now_ns,
                   sa.or_(outbox.c.order_key == "", ~blocked))


class _Endpoint:
    def __init__(self, name: str, notifier: Notifier, concurrency: int) -> None:
        self.name = name
        self.notifier = notifier
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix=f"webhook-{name}")
        self.busy = 0
        self.concurrency = concurrency


class OutboxWorker:
    """Delivers outbox rows; see the module docstring for the rules."""

    def __init__(self, engine: Engine, primary: Notifier, *, fallback: Notifier | None = None,
                 config: DeliveryConfig | None = None,
                 clock: Callable[[], int] = time.time_ns, seed: int | None = None) -> None:
        self.engine = engine
        self.config = config or DeliveryConfig()
        self._primary = _Endpoint("primary", primary, self.config.concurrency)
        self._fallback = (_Endpoint("fallback", fallback, self.config.concurrency)
                          if fallback is not None else None)
        self.clock = clock
        self.stats = OutboxStats()
        # not registered anywhere: lifeline.metrics.RuntimeCollector exposes it
        self.latency = Histogram("lifeline_webhook_delivery_latency_seconds",
                                 "time from an event entering the outbox to its delivery",
                                 buckets=DELIVERY_LATENCY_BUCKETS, registry=None)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._in_flight: set[int] = set()
        self._failing_since: int | None = None
        self._last_probe = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-outbox", daemon=True)
        window = give_up_after_s(self.config)
        if window is not None and window[0] * 1e9 < self.config.max_age_ns:
            log.warning("webhook.max_attempts = %d dead-letters a delivery after %.0f-%.0f s "
                        "of failures, before webhook.max_age (%.0f s): an outage longer "
                        "than that loses events; 0 retries until max_age",
                        self.config.max_attempts, window[0], window[1],
                        self.config.max_age_ns / 1e9)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start polling the outbox."""
        self._thread.start()

    def wake(self) -> None:
        """Look at the outbox now (new rows were committed)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Try to send what is due within ``timeout``, then stop; unsent rows stay pending."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.ready() and self._thread.is_alive():
            self.wake()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(max(0.1, deadline - time.monotonic()))
        for ep in (self._primary, self._fallback):
            if ep is not None:
                ep.pool.shutdown(wait=True, cancel_futures=True)

    def pending_due(self) -> int:
        """Pending rows due now (or in flight), including those waiting for an earlier row
        of their order key."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
                outbox.c.target == "", outbox.c.status == DeliveryStatus.PENDING.value,
                outbox.c.next_attempt_ns <= self.clock())).scalar_one())

    def ready(self) -> int:
        """Rows that can be sent now (or are in flight): due and first of their key."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
                ready_condition(self.clock()))).scalar_one())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except StoreError as exc:
                log.error("webhook outbox: %s", exc)
            self._wake.wait(self.config.poll_interval_s)
            self._wake.clear()

    # -- one pass --------------------------------------------------------------------------
    def run_once(self) -> int:
        """Start sending due rows (as many as the endpoint has free slots); returns how many."""
        now = self.clock()
        last_probe = self._last_probe
        endpoint, probe = self._choose(now)
        free = 1 if probe else endpoint.concurrency - self._busy(endpoint)
        if free <= 0:
            self._last_probe = last_probe
            return 0
        with self._lock:
            skip = list(self._in_flight)
        try:
            with self.engine.connect() as conn:
                query = (sa.select(outbox).where(ready_condition(now))
                         .order_by(outbox.c.id).limit(free))
                if skip:
                    query = query.where(outbox.c.id.not_in(skip))
                rows = [delivery_from_row(r) for r in conn.execute(query)]
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot read the webhook outbox: {exc}") from exc
        if probe and not rows:
            self._last_probe = last_probe  # nothing to probe with yet
        for d in rows:
            with self._lock:
                self._in_flight.add(d.id)
                endpoint.busy += 1
            try:
                endpoint.pool.submit(self._attempt, endpoint, d)
            except RuntimeError:  # pool shut down
                with self._lock:
                    endpoint.busy -= 1
                    self._in_flight.discard(d.id)
        return len(rows)

    def _busy(self, endpoint: _Endpoint) -> int:
        with self._lock:
            return endpoint.busy

    def _choose(self, now: int) -> tuple[_Endpoint, bool]:
        """The endpoint for this pass, and whether it is a probe of a failing primary."""
        fb = self._fallback
        with self._lock:
            failing = self._failing_since
        if fb is None or failing is None or now - failing < self.config.fallback_after_ns:
            return self._primary, False
        if now - self._last_probe >= self.config.fallback_after_ns:
            self._last_probe = now  # probe the primary with one delivery
            return self._primary, True
        return fb, False

    def _attempt(self, endpoint: _Endpoint, d: Delivery) -> None:
        try:
            self._send(endpoint, d)
        except Exception:
            log.exception("webhook %s %s: unexpected error", d.event, d.delivery_id)
        finally:
            with self._lock:
                endpoint.busy -= 1
                self._in_flight.discard(d.id)
            self._wake.set()

    def _send(self, endpoint: _Endpoint, d: Delivery) -> None:
        event = WebhookEvent(event=d.event, payload=d.payload, event_id=d.event_id,
                             delivery_id=d.delivery_id)
        attempt = d.attempts + 1
        try:
            endpoint.notifier.send(event)
        except DeliveryError as exc:
            now = self.clock()
            self.stats.failed_attempts += 1
            if endpoint is self._primary and exc.retryable:
                with self._lock:
                    if self._failing_since is None:
                        self._failing_since = now
            dead_reason = ""
            if not exc.retryable:
                dead_reason = "permanent failure"
            elif 0 < self.config.max_attempts <= attempt:
                dead_reason = f"{attempt} attempts"
            elif now - d.created_ns >= self.config.max_age_ns:
                dead_reason = "too old"
            values: dict[str, object] = {"attempts": attempt, "last_error": str(exc)[:1000],
                                         "last_status": exc.status}
            if dead_reason:
                values["status"] = DeliveryStatus.DEAD.value
                self.stats.dead += 1
                log.error("webhook %s %s dead-lettered (%s) after %d attempts: %s",
                          d.event, d.delivery_id, dead_reason, attempt, exc)
            else:
                delay = backoff_s(attempt, self.config, self._rng)
                values["next_attempt_ns"] = now + int(delay * 1e9)
                log.warning("webhook %s %s attempt %d to %s failed (%s); retry in %.2fs",
                            d.event, d.delivery_id, attempt, endpoint.name, exc, delay)
            self._update(d.id, values)
            return
        now = self.clock()
        if endpoint is self._primary:
            with self._lock:
                recovered = self._failing_since is not None
                self._failing_since = None
            if recovered:
                self._retry_now(now)
        else:
            self.stats.via_fallback += 1
        self.stats.delivered += 1
        self.latency.observe(max(0.0, (now - d.created_ns) / 1e9))
        self._update(d.id, {"status": DeliveryStatus.DELIVERED.value, "attempts": attempt,
                            "delivered_ns": now, "delivered_via": endpoint.name})
        log.debug("webhook %s %s delivered via %s (attempt %d)", d.event, d.delivery_id,
                  endpoint.name, attempt)

    def _retry_now(self, now: int) -> None:
        """The primary answers again: rows backing off after the outage are due now, so the
        first events after an hour-long outage do not wait out a 5-minute backoff. Rows the
        endpoint rate-limited (429) keep their backoff."""
        try:
            with self.engine.begin() as conn:
                n = conn.execute(outbox.update().where(
                    outbox.c.target == "", outbox.c.status == DeliveryStatus.PENDING.value,
                    outbox.c.next_attempt_ns > now,
                    sa.or_(outbox.c.last_status.is_(None), outbox.c.last_status != 429),
                ).values(next_attempt_ns=now)).rowcount
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot reschedule the webhook outbox: {exc}") from exc
        if n:
            log.info("webhook endpoint answers again: %d waiting deliveries retried now", n)
            self._wake.set()

    def _update(self, row_id: int, values: dict[str, object]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(outbox.update().where(outbox.c.id == row_id).values(**values))
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot update outbox row {row_id}: {exc}") from exc
