"""Prometheus metrics of the alerting side: database state at scrape time, and the
running service's rule evaluation and webhook delivery figures.

The ingest path has its own collector (:mod:`ingest.metrics`, ``lifeline_ingest_*``).
Here:

* :class:`StateCollector` reads the service database on every scrape, one query per
  family, each answered from an index and bounded by what is *open* (firing alerts,
  open cases, pending or dead deliveries), by the capped dead-letter store
  (``ingest.dlq_max_rows``), or by the fleet (devices);
* :class:`RuntimeCollector` exposes in-memory figures of the running service: rule
  evaluation time and webhook delivery latency (histograms) and delivery counters;
* :class:`HaCollector` the node's leadership (active/standby HA): role, fencing token,
  lease time left, takeovers and demotions, labelled ``node``.

Both are registered in the API app's own registry (``ApiContext.metrics_registry``), so
several apps in one process (tests) never collide; ``/metrics`` serves the process-wide
registry followed by the app's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import sqlalchemy as sa
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from alerts.cases.deadlines import overdue_stage
from alerts.cases.model import OPEN_CASE_STATES
from alerts.cases.store import case_from_row, cases
from alerts.delivery.model import DeliveryStatus
from alerts.delivery.outbox import OutboxWorker
from alerts.delivery.store import outbox
from alerts.lifecycle.model import AlertState
from alerts.lifecycle.store import alerts
from devices.status import LinkStatus
from devices.store import devices_table, status_table
from ingest.deadletter import Reason, dead_letters
from rules.model import Severity

if TYPE_CHECKING:
    from lifeline.leadership import LeaderElector

log = logging.getLogger(__name__)

RULE_EVAL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, float("inf"))
OPEN_STATES = tuple(sorted(s.value for s in OPEN_CASE_STATES))
STORED_REASONS = tuple(r.value for r in Reason if r is not Reason.DLQ_OVERFLOW)

Family = GaugeMetricFamily | CounterMetricFamily


def rule_evaluation_histogram() -> Histogram:
    """Time the rule engine takes per decoded batch (``trigger="batch"``) and per clock
    tick (``trigger="tick"``); not registered anywhere (a collector exposes it)."""
    return Histogram("lifeline_rule_evaluation_seconds",
                     "time the rule engine took per evaluation", ["trigger"],
                     buckets=RULE_EVAL_BUCKETS, registry=None)


class StateCollector(Collector):
    """Gauges computed from the service database on each scrape (see the module doc)."""

    def __init__(self, engine: Engine, clock: Callable[[], int] = time.time_ns) -> None:
        self.engine = engine
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        """No fixed description (registering must not query the database)."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """One query per family; a family whose query fails is left out and
        ``lifeline_database_up`` drops to 0."""
        ok = True
        for family in (self._alerts, self._cases, self._outbox, self._dead_letters,
                       self._devices):
            try:
                with self.engine.connect() as conn:
                    found = list(family(conn))
            except sa.exc.SQLAlchemyError as exc:
                log.warning("metrics: %s: %s", family.__name__.strip("_"), exc)
                ok = False
                continue
            yield from found
        yield GaugeMetricFamily("lifeline_database_up",
                                "1 when every database query of this scrape answered",
                                value=1.0 if ok else 0.0)

    def _alerts(self, conn: sa.Connection) -> Iterator[Family]:
        counts = dict.fromkeys((s.value for s in Severity), 0)
        rows = conn.execute(sa.select(alerts.c.severity, sa.func.count())
                            .where(alerts.c.state == AlertState.FIRING.value)
                            .group_by(alerts.c.severity))
        for severity, n in rows:
            counts[str(severity)] = int(n)
        family = GaugeMetricFamily("lifeline_alerts_firing", "alerts firing now, by severity",
                                   labels=["severity"])
        for severity, n in counts.items():
            family.add_metric([severity], n)
        yield family

    def _cases(self, conn: sa.Connection) -> Iterator[Family]:
        now = self.clock()
        open_by_state = dict.fromkeys(OPEN_STATES, 0)
        overdue = dict.fromkeys(OPEN_STATES, 0)
        for row in conn.execute(sa.select(cases).where(cases.c.state.in_(OPEN_STATES))):
            case = case_from_row(row)
            open_by_state[case.state.value] += 1
            if case.overdue or overdue_stage(case, now) is not None:
                overdue[case.state.value] += 1
        family = GaugeMetricFamily("lifeline_cases_open", "open cases, by workflow state",
                                   labels=["state"])
        late = GaugeMetricFamily("lifeline_cases_overdue",
                                 "open cases past a stage deadline (超期), by state",
                                 labels=["state"])
        for state in OPEN_STATES:
            family.add_metric([state], open_by_state[state])
            late.add_metric([state], overdue[state])
        yield family
        yield late

    def _outbox(self, conn: sa.Connection) -> Iterator[Family]:
        statuses = (DeliveryStatus.PENDING.value, DeliveryStatus.DEAD.value)
        found = {str(s): (int(n), oldest) for s, n, oldest in conn.execute(
            sa.select(outbox.c.status, sa.func.count(), sa.func.min(outbox.c.created_ns))
            .where(outbox.c.status.in_(statuses), outbox.c.target == "")
            .group_by(outbox.c.status))}
        pending, oldest = found.get(DeliveryStatus.PENDING.value, (0, None))
        dead, _ = found.get(DeliveryStatus.DEAD.value, (0, None))
        age = max(0.0, (self.clock() - int(oldest)) / 1e9) if oldest is not None else 0.0
        yield GaugeMetricFamily("lifeline_webhook_outbox_pending",
                                "webhook deliveries waiting to be sent (or retried)",
                                value=pending)
        yield GaugeMetricFamily("lifeline_webhook_outbox_dead",
                                "webhook deliveries given up (dead-lettered), not resent",
                                value=dead)
        yield GaugeMetricFamily("lifeline_webhook_outbox_oldest_pending_age_seconds",
                                "age of the oldest pending webhook delivery (0: none)",
                                value=age)
        # notification channel rows (docs/notifications.md), by channel
        waiting = GaugeMetricFamily("lifeline_notify_outbox_pending",
                                    "channel messages waiting (retries, escalation steps, "
                                    "quiet hours)", labels=["channel"])
        given_up = GaugeMetricFamily("lifeline_notify_outbox_dead",
                                     "channel messages given up (dead-lettered), not resent",
                                     labels=["channel"])
        for target, status, n in conn.execute(
                sa.select(outbox.c.target, outbox.c.status, sa.func.count())
                .where(outbox.c.status.in_(statuses), outbox.c.target != "")
                .group_by(outbox.c.target, outbox.c.status)):
            family = waiting if status == DeliveryStatus.PENDING.value else given_up
            family.add_metric([str(target)], int(n))
        yield waiting
        yield given_up

    def _dead_letters(self, conn: sa.Connection) -> Iterator[Family]:
        counts = dict.fromkeys(STORED_REASONS, 0)
        for reason, n in conn.execute(sa.select(dead_letters.c.reason, sa.func.count())
                                      .group_by(dead_letters.c.reason)):
            counts[str(reason)] = int(n)
        family = GaugeMetricFamily("lifeline_dead_letters",
                                   "dead letters in the store, by reason", labels=["reason"])
        for reason, n in counts.items():
            family.add_metric([reason], n)
        yield family

    def _devices(self, conn: sa.Connection) -> Iterator[Family]:
        link = sa.func.coalesce(status_table.c.link, LinkStatus.UNKNOWN.value)
        query = (sa.select(link, sa.func.count())
                 .select_from(devices_table.outerjoin(
                     status_table, status_table.c.device_id == devices_table.c.id))
                 .where(devices_table.c.deleted.is_(False), devices_table.c.enabled.is_(True))
                 .group_by(link))
        counts = dict.fromkeys((s.value for s in LinkStatus), 0)
        for state, n in conn.execute(query):
            counts[str(state)] = int(n)
        family = GaugeMetricFamily("lifeline_devices",
                                   "enabled devices, by link state (as last persisted)",
                                   labels=["link"])
        for state, n in counts.items():
            family.add_metric([state], n)
        yield family


class RuntimeCollector(Collector):
    """Rule evaluation time and webhook delivery figures of the running service."""

    def __init__(self, rule_evaluation: Histogram, worker: OutboxWorker | None) -> None:
        self.rule_evaluation = rule_evaluation
        self.worker = worker

    def describe(self) -> Iterator[Metric]:
        """No fixed description: produced on collect."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """Current values."""
        yield from self.rule_evaluation.collect()
        w = self.worker
        if w is None:  # no webhook configured
            return
        st = w.stats
        for name, doc, value in (
                ("delivered", "webhook deliveries that succeeded", st.delivered),
                ("failed_attempts", "webhook attempts that failed (retried or not)",
                 st.failed_attempts),
                ("dead_lettered", "webhook deliveries given up", st.dead),
                ("fallback_delivered", "webhook deliveries sent to the fallback endpoint",
                 st.via_fallback)):
            yield CounterMetricFamily(f"lifeline_webhook_{name}", doc, value=value)
        yield from w.latency.collect()


class HaCollector(Collector):
    """The leadership of this node, from its elector (no database query): whether it
    leads, its fencing token (0 as standby), the seconds left until it would step down
    by itself, and its takeovers and demotions since start, labelled ``node``."""

    def __init__(self, elector: LeaderElector) -> None:
        self.elector = elector

    def describe(self) -> Iterator[Metric]:
        """No fixed description: produced on collect."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """Current values."""
        e = self.elector
        node = [e.lease.node_id]
        token = e.token
        for name, doc, value in (
                ("leader", "1 while this node is the leader, 0 as standby",
                 0.0 if token is None else 1.0),
                ("token", "the fencing token of this node's term (0 as standby)",
                 float(token or 0)),
                ("lease_remaining_seconds", "seconds until the leader steps down unless "
                 "it renews (0 as standby)", e.remaining_s())):
            gauge = GaugeMetricFamily(f"lifeline_ha_{name}", doc, labels=["node"])
            gauge.add_metric(node, value)
            yield gauge
        for name, doc, count in (
                ("takeovers", "terms won from a leader whose lease had expired",
                 e.takeovers),
                ("demotions", "terms ended (lease lost, unreachable database, stop)",
                 e.demotions)):
            counter = CounterMetricFamily(f"lifeline_ha_{name}", doc, labels=["node"])
            counter.add_metric(node, count)
            yield counter
