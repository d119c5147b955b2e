"""Self-metrics of the ingest path: Prometheus collector and ``lifeline_ingest`` lines."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import REGISTRY, Collector

from ingest.influx import LATENCY_BUCKETS, WriterStats
from tsdb.lineproto import FieldValue
from tsdb.schema import INGEST

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2000, 5000, 10_000, 50_000, float("inf"))
SESSION_LOST_REASONS = ("not_present", "taken_over")


@dataclass(slots=True)
class IngestCounters:
    """Counters the pipeline updates (one thread writes, readers tolerate staleness)."""

    received: int = 0  # MQTT messages taken from the buffer
    decoded: int = 0  # values decoded into batches
    readings: int = 0  # telemetry objects accepted
    duplicates: int = 0
    events: int = 0
    statuses: int = 0
    dlq_replayed: int = 0
    batches: int = 0
    batch_sum: int = 0
    batch_buckets: list[int] = field(default_factory=lambda: [0] * len(BATCH_BUCKETS))
    dead_by_reason: Counter[str] = field(default_factory=Counter)
    # the service's persistent MQTT session lost: "not_present" (a reconnect found no
    # session on the broker), "taken_over" (another client connected with its client id)
    sessions_lost: Counter[str] = field(default_factory=Counter)

    def observe_batch(self, messages: int) -> None:
        """Record the size (messages) of one decoded batch."""
        self.batches += 1
        self.batch_sum += messages
        for i, bound in enumerate(BATCH_BUCKETS):
            if messages <= bound:
                self.batch_buckets[i] += 1
                break


Gauges = Callable[[], dict[str, float]]


class IngestCollector(Collector):
    """Exposes the counters, the writer's statistics and queue depths to Prometheus."""

    def __init__(self, counters: IngestCounters, writer: WriterStats, gauges: Gauges,
                 evicted: Callable[[], int]) -> None:
        self.counters = counters
        self.writer = writer
        self.gauges = gauges
        self.evicted = evicted
        self._registry: CollectorRegistry | None = None
        self._lock = threading.Lock()

    def register(self, registry: CollectorRegistry = REGISTRY) -> None:
        """Register with ``registry`` (the process-wide one by default)."""
        with self._lock:
            try:
                registry.register(self)
            except ValueError:
                log.warning("ingest metrics already registered by another service instance")
                return
            self._registry = registry

    def unregister(self) -> None:
        """Remove from the registry it was added to."""
        with self._lock:
            if self._registry is not None:
                self._registry.unregister(self)
                self._registry = None

    def describe(self) -> Iterator[CounterMetricFamily]:
        """No fixed description: metrics are produced on collect (avoids a collect at register)."""
        return iter(())

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        """Current values."""
        c, w = self.counters, self.writer
        simple = {
            "received": ("MQTT messages received", c.received),
            "decoded_values": ("values decoded", c.decoded),
            "readings": ("telemetry readings accepted", c.readings),
            "duplicates": ("readings dropped as duplicates", c.duplicates),
            "events": ("device events decoded", c.events),
            "statuses": ("device status messages decoded", c.statuses),
            "stored_lines": ("lines written to InfluxDB", w.lines_written),
            "write_batches": ("write requests that succeeded", w.batches_written),
            "write_failures": ("write requests that failed", w.write_failures),
            "spooled_lines": ("lines put in the on-disk spool", w.lines_spooled),
            "spool_replayed_lines": ("lines replayed from the spool", w.lines_replayed),
            "rejected_lines": ("lines InfluxDB refused (dead-lettered)", w.lines_rejected),
            "dropped_lines": ("lines lost at shutdown (not acknowledged)", w.lines_dropped),
            "dlq_replayed": ("dead letters replayed", c.dlq_replayed),
            "dlq_evicted": ("dead letters evicted by the size cap", self.evicted()),
        }
        for name, (doc, value) in simple.items():
            yield CounterMetricFamily(f"lifeline_ingest_{name}", doc, value=value)
        dead = CounterMetricFamily("lifeline_ingest_dead_lettered", "messages dead-lettered",
                                   labels=["reason"])
        for reason, n in sorted(c.dead_by_reason.items()):
            dead.add_metric([reason], n)
        yield dead
        lost = CounterMetricFamily(
            "lifeline_ingest_mqtt_sessions_lost",
            "the service's persistent MQTT session lost (queued messages gone)",
            labels=["reason"])
        for reason in SESSION_LOST_REASONS:
            lost.add_metric([reason], c.sessions_lost[reason])
        yield lost
        yield CounterMetricFamily("lifeline_ingest_backpressure_seconds",
                                  "time the writer held acknowledgements (spool full)",
                                  value=w.blocked_s)
        yield _histogram("lifeline_ingest_batch_messages", "messages per decoded batch",
                         BATCH_BUCKETS, c.batch_buckets, float(c.batch_sum))
        yield _histogram("lifeline_ingest_write_latency_seconds", "InfluxDB write latency",
                         LATENCY_BUCKETS, w.latency_buckets, w.latency_sum_s)
        for gauge, level in self.gauges().items():
            yield GaugeMetricFamily(f"lifeline_ingest_{gauge}", gauge.replace("_", " "),
                                    value=level)


def _histogram(name: str, doc: str, bounds: tuple[float, ...], counts: list[int],
               total: float) -> HistogramMetricFamily:
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, n in zip(bounds, counts, strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


def ingest_line(counters: IngestCounters, writer: WriterStats, gauges: dict[str, float],
                evicted: int, ts_ns: int, host: str) -> str:
    """One ``lifeline_ingest`` point with every counter and gauge as a field."""
    fields: dict[str, FieldValue] = {
        "received": counters.received,
        "decoded_values": counters.decoded,
        "readings": counters.readings,
        "duplicates": counters.duplicates,
        "dead_lettered": sum(counters.dead_by_reason.values()),
        "stored_lines": writer.lines_written,
        "spooled_lines": writer.lines_spooled,
        "spool_replayed_lines": writer.lines_replayed,
        "rejected_lines": writer.lines_rejected,
        "write_failures": writer.write_failures,
        "dlq_evicted": evicted,
        "batches": counters.batches,
    }
    fields.update((f"dead_{k}", int(v)) for k, v in sorted(counters.dead_by_reason.items()))
    fields.update((f"mqtt_session_lost_{k}", int(counters.sessions_lost[k]))
                  for k in SESSION_LOST_REASONS)
    fields.update((k, float(v)) for k, v in gauges.items())
    fields["write_latency_s"] = float(writer.last_latency_s)
    return INGEST.line({"host": host}, fields, ts_ns)
