"""The channel worker: one thread per notification channel, sending that channel's outbox
rows (``target`` = its name) with the outbox's rules (retries with backoff until
``max_age``, dead letters, per (channel, case) order, at least once across restarts).

Rate limits: each channel has its platform's limits (:data:`alerts.notify.ratelimit.
DEFAULT_LIMITS`, or ``rate_limit``). When more rows are ready than sends are allowed, the
ready rows are merged into one message (up to ``max_batch``); when none are allowed, rows
wait (no attempt is counted). A platform "too fast" answer blocks the channel for the
time the platform asks.

Escalation rows (``notify.escalation``) are checked when due: if the alert has been
acknowledged or resolved, or the case accepted (or later) meanwhile, the row is
``cancelled`` instead of sent.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.cases.model import CaseState
from alerts.cases.store import cases
from alerts.delivery.model import Delivery, DeliveryStatus
from alerts.delivery.outbox import DeliveryConfig, backoff_s, ready_condition
from alerts.delivery.store import delivery_from_row, outbox
from alerts.errors import DeliveryError, StoreError
from alerts.lifecycle.model import AlertState
from alerts.lifecycle.store import alerts
from alerts.notify.model import Channel, ChannelError
from alerts.notify.ratelimit import RateLimiter
from alerts.notify.render import Renderer

log = logging.getLogger(__name__)

# a case in one of these states was accepted (or is past needing it)
_PAST_ACCEPT = frozenset({CaseState.IN_PROGRESS, CaseState.HANDLED, CaseState.VERIFIED,
                          CaseState.CLOSED, CaseState.CANCELLED})


@dataclass(slots=True)
class ChannelStats:
    """Counters of one channel since start."""

    messages: int = 0
    delivered_rows: int = 0
    merged_rows: int = 0
    failed_attempts: int = 0
    dead: int = 0
    cancelled: int = 0


def escalation_needed(engine: Engine, payload: Mapping[str, Any]) -> bool:
    """An escalation step is still needed: its case is not accepted (nor later) and its
    alert is not acknowledged nor resolved."""
    case = payload.get("case") or {}
    alert = payload.get("alert") or {}
    with engine.connect() as conn:
        if case.get("id") is not None:
            row = conn.execute(sa.select(cases.c.state, cases.c.accepted_ns).where(
                cases.c.id == case["id"])).first()
            if row is not None and (row.accepted_ns is not None
                                    or CaseState(row.state) in _PAST_ACCEPT):
                return False
        if alert.get("id") is not None:
            row = conn.execute(sa.select(alerts.c.state, alerts.c.acked_ns).where(
                alerts.c.id == alert["id"])).first()
            if row is not None and (row.acked_ns is not None
                                    or row.state == AlertState.RESOLVED.value):
                return False
    return True


class _Runner:
    def __init__(self, channel: Channel, limiter: RateLimiter, max_batch: int) -> None:
        self.channel = channel
        self.limiter = limiter
        self.max_batch = max_batch
        self.stats = ChannelStats()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None


class NotifyWorker:
    """Sends the channel rows of the outbox; see the module docstring."""

    def __init__(self, engine: Engine, renderer: Renderer,
                 channels: Sequence[tuple[Channel, RateLimiter, int]], *,
                 config: DeliveryConfig | None = None,
                 clock: Callable[[], int] = time.time_ns, seed: int | None = None,
                 guard: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.renderer = renderer
        self.config = config or DeliveryConfig()
        self.clock = clock
        self.runners = {c.name: _Runner(c, lim, batch) for c, lim, batch in channels}
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        # active/standby: raises DeliveryError unless this node still leads (checked
        # right before each send)
        self.guard = guard

    def stats(self, name: str) -> ChannelStats:
        """Counters of channel ``name``."""
        return self.runners[name].stats

    def start(self) -> None:
        """One thread per channel."""
        for name, runner in self.runners.items():
            runner.thread = threading.Thread(target=self._run, args=(runner,),
                                             name=f"notify-{name}", daemon=True)
            runner.thread.start()

    def wake(self) -> None:
        """New rows were committed."""
        for runner in self.runners.values():
            runner.wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads (after their current send); unsent rows stay pending."""
        self._stop.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for runner in self.runners.values():
            if runner.thread is not None:
                runner.thread.join(max(0.1, deadline - time.monotonic()))

    def _run(self, runner: _Runner) -> None:
        while not self._stop.is_set():
            wait = self.config.poll_interval_s
            try:
                sent = self.run_once(runner.channel.name)
                if sent < 0:  # rate-limited: sleep until a send is allowed
                    wait = max(0.05, min(runner.limiter.wait_s(self.clock() / 1e9), 5.0))
                elif sent > 0:
                    continue
            except StoreError as exc:
                log.error("notify %s: %s", runner.channel.name, exc)
            except Exception:
                log.exception("notify %s: unexpected error", runner.channel.name)
            runner.wake.wait(wait)
            runner.wake.clear()

    # -- one pass ----------------------------------------------------------------------
    def _ready(self, name: str, now: int, limit: int) -> list[Delivery]:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(outbox).where(ready_condition(now, name))
                                    .order_by(outbox.c.id).limit(limit))
                return [delivery_from_row(r) for r in rows]
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot read the outbox for channel {name}: {exc}") from exc

    def run_once(self, name: str) -> int:
        """Send what channel ``name`` may send now: rows sent (-1: rows wait for the rate
        limit)."""
        runner = self.runners[name]
        now = self.clock()
        rows = self._ready(name, now, runner.max_batch)
        due: list[Delivery] = []
        for d in rows:
            if (d.payload.get("notify") or {}).get("escalation") and not escalation_needed(
                    self.engine, d.payload):
                runner.stats.cancelled += 1
                self._update([d.id], {"status": DeliveryStatus.CANCELLED.value,
                                      "last_error": "acknowledged / accepted in time"})
                log.info("notify %s: escalation %s cancelled (acknowledged in time)", name,
                         d.delivery_id)
                continue
            due.append(d)
        if not due:
            return len(rows)
        free = runner.limiter.available(now / 1e9)
        if free <= 0:
            return -1
        # over the limit: one merged message (the other free sends stay for later rows)
        groups = [[d] for d in due] if len(due) <= free else [due]
        for group in groups:
            self._send(runner, group)
        return sum(len(g) for g in groups)

    def _send(self, runner: _Runner, group: list[Delivery]) -> None:
        name = runner.channel.name
        attempt_now = self.clock()
        try:
            message = self.renderer.render([(d.event, d.payload) for d in group])
            runner.limiter.take(attempt_now / 1e9)
            if self.guard is not None:
                self.guard()
            runner.channel.send(message)
        except DeliveryError as exc:
            self._failed(runner, group, exc)
            return
        now = self.clock()
        runner.stats.messages += 1
        runner.stats.delivered_rows += len(group)
        if len(group) > 1:
            runner.stats.merged_rows += len(group)
        for d in group:
            self._update([d.id], {"status": DeliveryStatus.DELIVERED.value,
                                  "attempts": d.attempts + 1, "delivered_ns": now,
                                  "delivered_via": name[:16], "last_error": ""})
        log.info("notify %s: %d event(s) delivered in one message", name, len(group))

    def _failed(self, runner: _Runner, group: list[Delivery], exc: DeliveryError) -> None:
        name = runner.channel.name
        now = self.clock()
        runner.stats.failed_attempts += 1
        throttled = exc.throttled_s if isinstance(exc, ChannelError) else 0.0
        if throttled > 0:
            runner.limiter.block(now / 1e9, throttled)
        for d in group:
            attempt = d.attempts + 1
            values: dict[str, object] = {"attempts": attempt, "last_error": str(exc)[:1000],
                                         "last_status": exc.status}
            reason = ""
            if not exc.retryable:
                reason = "permanent failure"
            elif 0 < self.config.max_attempts <= attempt:
                reason = f"{attempt} attempts"
            elif now - d.created_ns >= self.config.max_age_ns:
                reason = "older than max_age"
            if reason:
                values["status"] = DeliveryStatus.DEAD.value
                runner.stats.dead += 1
                log.error("notify %s: %s %s dead-lettered (%s): %s", name, d.event,
                          d.delivery_id, reason, exc)
            else:
                delay = max(backoff_s(attempt, self.config, self._rng), throttled)
                values["next_attempt_ns"] = now + int(delay * 1e9)
                log.warning("notify %s: %s %s attempt %d failed (%s); retry in %.1fs", name,
                            d.event, d.delivery_id, attempt, exc, delay)
            self._update([d.id], values)

    def _update(self, ids: list[int], values: dict[str, object]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(outbox.update().where(outbox.c.id.in_(ids)).values(**values))
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot update outbox rows {ids}: {exc}") from exc
