"""The persistent webhook outbox and its delivery worker.

Events are rows of ``webhook_outbox`` written in the same transaction as the change they
announce. The worker sends due rows with the notifier contract of :mod:`alerts.webhook`
(signed, with a delivery id that never changes), retries timeouts, connection errors,
5xx, 408 and 429 with exponential backoff and jitter, and dead-letters a row on a
permanent failure (other 4xx), after ``max_attempts`` or past ``max_age``. A row that was
in flight when the service died is still ``pending`` and is sent again after a restart:
at least once, always with the same delivery id. When the primary endpoint has been
failing for ``fallback_after``, deliveries go to the fallback endpoint (the primary is
probed now and then and takes over again when it answers).
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
from sqlalchemy.engine import Engine

from alerts.errors import DeliveryError, NotFoundError, StoreError
from alerts.model import Delivery, DeliveryStatus
from alerts.schema import outbox
from alerts.store import delivery_from_row
from alerts.webhook import Notifier, WebhookEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """Retry rules of the delivery worker."""

    max_attempts: int = 10
    max_age_ns: int = 24 * 3600 * 10**9
    base_delay_s: float = 0.5
    max_delay_s: float = 300.0
    poll_interval_s: float = 0.2
    concurrency: int = 4
    fallback_after_ns: int = 300 * 10**9


@dataclass(slots=True)
class OutboxStats:
    """Counters of the worker since start."""

    delivered: int = 0
    failed_attempts: int = 0
    dead: int = 0
    via_fallback: int = 0


def backoff_s(attempt: int, config: DeliveryConfig, rng: random.Random) -> float:
    """Exponential delay after ``attempt`` failures, with jitter in [50 %, 100 %]."""
    delay = min(config.max_delay_s, config.base_delay_s * 2 ** (attempt - 1))
    return float(delay * (0.5 + rng.random() / 2))


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
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._in_flight: set[int] = set()
        self._failing_since: int | None = None
        self._last_probe = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-outbox", daemon=True)

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
        while time.monotonic() < deadline and self.pending_due() and self._thread.is_alive():
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
        """Pending rows due now (or in flight)."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
                outbox.c.status == DeliveryStatus.PENDING.value,
                outbox.c.next_attempt_ns <= self.clock())).scalar_one())

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
                query = (sa.select(outbox).where(
                    outbox.c.status == DeliveryStatus.PENDING.value,
                    outbox.c.next_attempt_ns <= now).order_by(outbox.c.id).limit(free))
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
            elif attempt >= self.config.max_attempts:
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
                self._failing_since = None
        else:
            self.stats.via_fallback += 1
        self.stats.delivered += 1
        self._update(d.id, {"status": DeliveryStatus.DELIVERED.value, "attempts": attempt,
                            "delivered_ns": now, "delivered_via": endpoint.name})
        log.debug("webhook %s %s delivered via %s (attempt %d)", d.event, d.delivery_id,
                  endpoint.name, attempt)

    def _update(self, row_id: int, values: dict[str, object]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(outbox.update().where(outbox.c.id == row_id).values(**values))
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot update outbox row {row_id}: {exc}") from exc


def list_deliveries(engine: Engine, *, status: DeliveryStatus | None = None,
                    event: str | None = None, case_id: int | None = None,
                    limit: int = 100, offset: int = 0) -> tuple[list[Delivery], int]:
    """Outbox rows, newest first, and the total count of the filter."""
    cond = []
    if status is not None:
        cond.append(outbox.c.status == status.value)
    if event:
        cond.append(outbox.c.event == event)
    if case_id is not None:
        cond.append(outbox.c.case_id == case_id)
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(outbox).where(*cond)
                             ).scalar_one()
        rows = conn.execute(sa.select(outbox).where(*cond).order_by(outbox.c.id.desc())
                            .limit(limit).offset(offset))
        return [delivery_from_row(r) for r in rows], int(total)


def resend(engine: Engine, row_id: int, now_ns: int) -> Delivery:
    """Queue a (dead or delivered) row again with the same delivery id; restarts its age."""
    with engine.begin() as conn:
        found = conn.execute(outbox.update().where(outbox.c.id == row_id).values(
            status=DeliveryStatus.PENDING.value, attempts=0, next_attempt_ns=now_ns,
            created_ns=now_ns, last_error="")).rowcount
        if not found:
            raise NotFoundError(f"delivery {row_id} not found")
        row = conn.execute(sa.select(outbox).where(outbox.c.id == row_id)).one()
    log.info("webhook delivery %d (%s) queued again", row_id, row.delivery_id)
    return delivery_from_row(row)
