"""The service: adapters around one :class:`~lifeline.pipeline.Pipeline`, periodic tasks
and workers.

MQTT → raw buffer → pipeline (decode → (InfluxDB writer ∥ rules → device events →
alerts)) → webhooks. The ingest loop steps the pipeline and runs the periodic tasks
(:mod:`lifeline.scheduler`) between batches; delivery workers (the alerts runtime and
its outbox, and any other delivery target) are in :attr:`Service.workers`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.engine import Engine

from alerts.errors import DeliveryError
from common.retry import Backoff, RetriesExhaustedError, retry_until
from devices.catalogue import Catalogue
from devices.registry import read_inventory
from devices.series import SeriesTable
from devices.store import CachedRegistry, DeviceStore
from devices.topics import TopicKind, TopicScheme
from ingest.batch import RawBuffer, RawMessage
from ingest.deadletter import DeadLetter, DeadLetterStore, Reason
from ingest.decode import DecodeLimits, Decoder, DecodeResult, keys_from_json, keys_to_json
from ingest.errors import WriteError
from ingest.influx import InfluxV1Transport, InfluxV2Transport, InfluxWriter
from ingest.metrics import IngestCollector, IngestCounters, ingest_line
from ingest.netproc import ProcessSubscriber
from ingest.spool import ChunkSpool, Spool
from ingest.spool_db import DatabaseSpool
from ingest.subscriber import MqttOptions, MqttSubscriber
from lifeline.alerting import STORE_BACKOFF, AlertsRuntime, TrackerStateView
from lifeline.app import ApiServer, ReadyCheck, create_app
from lifeline.clock import ServiceClock, parse_instant_ns
from lifeline.dashboard_feed import DeviceInfoFeed, service_metrics_line
from lifeline.db import open_database
from lifeline.device_status import DeviceMonitor
from lifeline.errors import LifelineError
from lifeline.metrics import RuntimeCollector, rule_evaluation_histogram
from lifeline.mqtt_session import SessionWatch
from lifeline.pipeline import Pipeline
from lifeline.rules_runtime import RuleUpkeep
from lifeline.scheduler import PeriodicTask, Scheduler
from lifeline.settings import Settings
from lifeline.shared_state import DEDUP_KEYS, RULE_STATE, SharedState, StateError
from rules.engine import RuleEngine, RuleStateSnapshot
from rules.loader import load_rules

if TYPE_CHECKING:
    from fastapi import FastAPI
    from prometheus_client.registry import Collector

    from lifeline.api.deps import HaView

log = logging.getLogger(__name__)


_REJOIN_BACKOFF = Backoff(base_s=1.0, max_s=30.0)


class StartupError(LifelineError):
    """A dependency of the service could not be reached or loaded at start-up."""


@dataclass(slots=True)
class ServiceStats:
    """Counters of the running service."""

    received: int = 0
    decoded_values: int = 0
    dead_lettered: int = 0
    stored_lines: int = 0
    findings: int = 0


@dataclass(frozen=True, slots=True)
class LeaderTerm:
    """What a leader's service gets from the elector (``[ha] enabled``): its node id,
    the database engine whose writes are fenced (:func:`lifeline.fencing.install_fence`)
    and the local check of leadership for writes outside the database."""

    node_id: str
    group: str
    engine: Engine
    is_leader: Callable[[], bool]


class LeaderWriteTransport:
    """The InfluxDB transport of a leader: refuses to send once this node no longer
    leads (a frozen leader that resumes writes nothing; its messages stay unacknowledged
    and the broker gives them to the new leader)."""

    def __init__(self, inner: InfluxV1Transport | InfluxV2Transport,
                 is_leader: Callable[[], bool]) -> None:
        self.inner = inner
        self._is_leader = is_leader

    def write(self, lines: list[str]) -> None:
        """Send ``lines`` if this node leads; WriteError (retryable) otherwise."""
        if not self._is_leader():
            raise WriteError("this node is no longer the leader", retryable=True)
        self.inner.write(lines)

    def ping(self) -> None:
        """Ping InfluxDB."""
        self.inner.ping()

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()


class Join:
    """Runs ``callback`` once :meth:`part` was called ``parts`` times (from any threads):
    an acknowledgement that waits for the writer *and* the alerts thread."""

    def __init__(self, callback: Callable[[], None], parts: int) -> None:
        self._callback = callback
        self._left = parts
        self._lock = threading.Lock()

    def part(self) -> None:
        """One part is done."""
        with self._lock:
            self._left -= 1
            done = self._left == 0
        if done:
            self._callback()


class Worker(Protocol):
    """A background worker the service starts and stops (delivery targets …)."""

    def start(self) -> None:
        """Start working."""

    def stop(self) -> None:
        """Finish what is due and stop."""


class RetryingDeadLetters:
    """The dead-letter table as the pipeline's dead-letter port: retries while the
    database is away (holding the pipeline: letters are never dropped) and counts."""

    def __init__(self, store: DeadLetterStore, stats: ServiceStats,
                 ingest: IngestCounters) -> None:
        self._table = store
        self._stats = stats
        self._ingest = ingest

    def store(self, letters: list[DeadLetter]) -> None:
        """Keep ``letters``; blocks (retrying) until they are stored."""
        failures = 0
        while True:
            try:
                self._stats.dead_lettered += self._table.add_many(letters)
            except Exception as exc:  # database errors: never drop the letters
                log.error("dead-letter store unavailable (%d letters waiting): %s",
                          len(letters), exc)
                failures += 1
                time.sleep(STORE_BACKOFF.delay(failures))
                continue
            for dl in letters:
                self._ingest.dead_by_reason[dl.reason.value] += 1
            return


def mqtt_options(settings: Settings) -> MqttOptions:
    """Subscriber options from the settings."""
    m = settings.mqtt
    return MqttOptions(
        host=m.host, port=m.port, client_id=m.client_id, protocol=m.protocol, qos=m.qos,
        clean_start=m.clean_start,
        session_expiry_s=m.session_expiry.ns // 1_000_000_000,
        keepalive_s=m.keepalive, username=m.username, password=m.password.get_secret_value(),
        tls=m.tls, tls_ca_file=m.tls_ca_file, shared_group=m.shared_group,
        connect_timeout_s=m.connect_timeout.seconds,
        buffered_reads=m.buffered_reads,
    )


class Service:
    """The running service; built from settings, started, stopped.

    Adapters (broker subscriber, InfluxDB writer, databases, alerts runtime, device
    monitor) around one :class:`~lifeline.pipeline.Pipeline`; housekeeping is the
    :attr:`tasks` list (one scheduler, run by the ingest loop); :attr:`workers` are
    started after the writer and stopped, in list order, after the pipeline drained.
    """

    api: ApiServer | None = None

    def __init__(self, settings: Settings, term: LeaderTerm | None = None) -> None:
        self.settings = settings
        self.term = term
        self.stats = ServiceStats()
        ck, ing = settings.clock, settings.ingest
        # timers follow wall time, or reading times for simulation/replay ([clock])
        self.clock = ServiceClock(ck.source, parse_instant_ns(ck.start) if ck.start else None,
                                  ing.max_future.ns)
        catalogue = Catalogue.with_file(settings.devices.catalogue)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        # active/standby: the leader's engine fences every write; the node imported the
        # inventory and migrated the schema before it was elected (lifeline.ha)
        self.db = term.engine if term is not None else open_database(settings.database_url)
        self.device_store = DeviceStore(self.db)
        if settings.devices.inventory and term is None:  # imported into the registry
            self.device_store.upsert_many(read_inventory(settings.devices.inventory, catalogue))
        self.registry = CachedRegistry(self.device_store)
        series = SeriesTable()
        scheme = TopicScheme(settings.mqtt.prefix)
        decoder = Decoder(scheme, self.registry, catalogue, series, DecodeLimits(
            max_payload_bytes=ing.max_payload_bytes,
            max_future_ns=ing.max_future.ns,
            max_past_ns=ing.max_past.ns, dedup_window=ing.dedup_window))
        rules = RuleEngine(load_rules(settings.rules.paths), series,
                           timezone=settings.rules.timezone)
        self.rule_evaluation = rule_evaluation_histogram()  # /metrics
        self.dead_letters = DeadLetterStore(self.db, max_rows=ing.dlq_max_rows,
                                            max_payload=ing.max_payload_bytes)
        self.transport = influx_transport(settings)
        self.spool: ChunkSpool
        transport: InfluxV1Transport | InfluxV2Transport | LeaderWriteTransport = self.transport
        if term is None:
            self.spool = Spool(ing.spool_dir or settings.run_dir / "spool", ing.spool_max_bytes,
                               fsync=ing.spool_fsync)
        else:  # what was acknowledged must survive this machine: the spool is a table
            self.spool = DatabaseSpool(self.db, ing.spool_max_bytes)
            transport = LeaderWriteTransport(self.transport, term.is_leader)
        inf = settings.influx
        self.writer = InfluxWriter(transport, batch_lines=inf.batch_lines,
                                   flush_interval=inf.flush_interval, retries=inf.retries,
                                   spool=self.spool, on_written=self._on_written,
                                   on_rejected=self._on_rejected)
        self.ingest = IngestCounters()
        self.metrics = IngestCollector(self.ingest, self.writer.stats, self._ingest_gauges,
                                       lambda: self.dead_letters.evicted)
        self.alerts = AlertsRuntime(settings, self.db, self.registry, self.writer.submit,
                                    send_guard=None if term is None else self._delivery_guard)
        self.alerts.pipeline.clock = self.clock.now_ns
        self.devices = DeviceMonitor(self.device_store, self.registry, catalogue, series,
                                     self.writer.submit, settings.devices,
                                     now_ns=self.clock.now_ns())
        self.alerts.use_device_state(TrackerStateView(self.devices.tracker))  # inhibition
        self.device_info = DeviceInfoFeed(self.registry.__iter__, self.writer.submit)
        self.pipeline = Pipeline(
            decoder, rules, series, devices=self.devices, alerts=self.alerts, clock=self.clock,
            dead_letters=RetryingDeadLetters(self.dead_letters, self.stats, self.ingest),
            writer=self.writer,
            rule_timer=lambda kind, s: self.rule_evaluation.labels(kind).observe(s),
            on_decoded=self._count_decoded)
        rs = settings.rules
        self.shared = (SharedState(self.db, term.group, term.node_id) if term is not None
                       else None)
        self.rules = RuleUpkeep(self.pipeline, rs.paths, self.clock,
                                settings.run_dir / rs.state_file
                                if rs.state_file and term is None else None,
                                tick_interval=rs.tick_interval,
                                save_interval=(rs.save_interval if term is None
                                               else settings.ha.state_interval),
                                on_findings=self._count_findings, shared=self.shared)
        self.rules.restore_state(self.registry, self.db)
        # (rule state, de-dup keys) taken between batches, once the readings and findings
        # before that point were stored and committed (active/standby)
        self._settled_state: tuple[RuleStateSnapshot, list[object] | None] | None = None
        self._saver = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="state")
        self._saving: concurrent.futures.Future[None] | None = None
        self._rejoins = 0  # reconnect attempts while leading (leader-gated MQTT)
        self._rejoin_at = 0.0
        self._restore_dedup_keys()
        self.buffer = RawBuffer(wake_at=ing.batch_messages, limit=ing.raw_buffer_max)
        options = mqtt_options(settings)
        # the persistent session: lost → counted, warned, service alert (and across restarts)
        self.session_watch = SessionWatch(options, settings.run_dir, self.ingest,
                                          self.alerts.process, self.clock.now_ns)
        options = replace(options, expect_session=self.session_watch.expected_at_start(),
                          leader_gated=term is not None)
        subscriber_class = ProcessSubscriber if settings.mqtt.network_process else MqttSubscriber
        self.subscriber: MqttSubscriber | ProcessSubscriber = subscriber_class(
            options, [scheme.subscription(kind) for kind in TopicKind], self.buffer)
        # event clock: the connect (subscriber.connects) whose readings have moved the clock
        self._heard_on_connect = 0
        # delivery workers: the alerts runtime (and its webhook outbox) first; channels
        # append theirs — started after the writer, stopped in this order after the drain
        self.workers: list[Worker] = [self.alerts]
        if self.alerts.notify is not None:  # notification channels (docs/notifications.md)
            self.workers.append(self.alerts.notify.worker)
        self.tasks = Scheduler([
            PeriodicTask("dead-letter-replay", 1.0, self.replay_dead_letters),
            PeriodicTask("devices-tick", 0.0, self._devices_tick),
            PeriodicTask("mqtt-session", 0.0, lambda: self.session_watch.check(self.subscriber)),
            *self.rules.tasks(),
            PeriodicTask("self-metrics", ing.metrics_interval.seconds,
                         self.write_self_metrics),
            PeriodicTask("progress-log", 10.0, self._log_progress),
        ])
        if term is not None:
            self.tasks.add(PeriodicTask("shared-state-take", settings.ha.state_interval.seconds,
                                        self._take_shared_state))
            self.tasks.add(PeriodicTask("shared-state-save", 0.0, self._flush_shared_state))
            self.tasks.add(PeriodicTask("mqtt-rejoin", 0.5, self._rejoin_if_leader))
        log.info("loaded %d devices, %d rules", len(self.registry), len(rules.rules))

    def _delivery_guard(self) -> None:
        """Raise DeliveryError (retry later) unless this node still leads."""
        if self.term is not None and not self.term.is_leader():
            raise DeliveryError("this node is no longer the leader", retryable=True)

    def _restore_dedup_keys(self) -> None:
        """The recent reading keys the last leader saved (active/standby)."""
        dedup = self.pipeline.decoder.dedup
        if self.shared is None or dedup is None:
            return
        try:
            saved = self.shared.load(DEDUP_KEYS)
        except StateError as exc:
            log.error("de-duplication keys not restored: %s", exc)
            return
        if saved is not None:
            keys = keys_from_json(saved.body)
            dedup.remember(keys)
            log.info("restored %d de-duplication keys saved by %s", len(keys), saved.node_id)

    def _flush_shared_state(self) -> None:
        """Hand the state :meth:`_take_shared_state` took, once it has settled, to the
        saver thread (serialising and compressing it is off the ingest thread)."""
        if self._settled_state is None or self.shared is None:
            return
        if self._saving is not None and not self._saving.done():
            return  # the previous save is still running: this one waits a pass
        settled, self._settled_state = self._settled_state, None
        self._saving = self._saver.submit(self._save_settled, *settled)

    def _save_settled(self, snapshot: RuleStateSnapshot, keys: list[object] | None) -> None:
        assert self.shared is not None
        try:
            self.shared.save(RULE_STATE, snapshot.to_bytes(compress=True))
            if keys is not None:
                self.shared.save(DEDUP_KEYS, keys_to_json(keys))
        except (LifelineError, OSError) as exc:  # NotLeader included: nothing written
            log.error("cannot save the rule state and de-duplication keys: %s", exc)

    def _take_shared_state(self) -> None:
        """Active/standby: take the state of now, to be saved once it has *settled*.

        The rule state and the recent de-duplication keys are taken between two batches
        and saved only when the writer has stored every reading before that point and the
        alerts thread has committed every finding before it: a document saved earlier
        would make the next leader skip readings (as duplicates, or as older than the rule
        state) whose messages the broker gives it again because they were never
        acknowledged.
        """
        if self.shared is None:
            return
        snapshot = self.pipeline.engine.snapshot_state()
        dedup = self.pipeline.decoder.dedup
        n = self.settings.ha.dedup_keys
        keys = dedup.recent(n) if dedup is not None and n else None

        def settle() -> None:
            self._settled_state = (snapshot, keys)

        join = Join(settle, 2)
        self.writer.submit([], join.part)
        self.alerts.after_applied(join.part)

    def _rejoin_if_leader(self) -> None:
        """The MQTT connection was lost (broker restart, or a stale node took the session
        for a moment): connect again while this node leads, with backoff."""
        if self.term is None or not getattr(self.subscriber, "yielded", False):
            self._rejoins, self._rejoin_at = 0, 0.0
            return
        if not self.term.is_leader() or time.monotonic() < self._rejoin_at:
            return
        self._rejoins += 1
        if self._rejoins > 1:
            log.info("MQTT: reconnecting (attempt %d) while this node leads", self._rejoins)
        self.subscriber.rejoin()
        # 1, 2, 4 … 30 s between attempts, as paho's own reconnect delay would be
        self._rejoin_at = time.monotonic() + _REJOIN_BACKOFF.nominal(self._rejoins)

    def _on_written(self, lines: int) -> None:
        self.stats.stored_lines += lines

    def _count_findings(self, n: int) -> None:
        self.stats.findings += n

    def _on_rejected(self, lines: list[str], error: str) -> None:
        """InfluxDB refused these lines as malformed: keep them as dead letters."""
        now = time.time_ns()
        self.pipeline.dead_letters.store([DeadLetter("influx:write", line.encode(),
                                                     Reason.WRITE_REJECTED, error, now)
                                          for line in lines])

    def _ingest_gauges(self) -> dict[str, float]:
        return {
            "raw_buffer": float(len(self.buffer)),
            "raw_buffer_peak": float(self.buffer.peak),
            "read_holds": float(self.subscriber.read_holds),
            "writer_queue": float(self.writer.pending()),
            "spool_chunks": float(len(self.spool)),
            "spool_bytes": float(self.spool.bytes),
            "influx_up": 1.0 if self.writer.influx_up else 0.0,
            "mqtt_connected": 1.0 if self.subscriber.connected else 0.0,
            "acked": float(self.subscriber.acked),
            "stale_acks": float(self.subscriber.stale_acks),
            "network_process_restarts": float(getattr(self.subscriber, "restarts", 0)),
        }

    def start(self, api: bool = True) -> None:
        """Reach InfluxDB and the broker (with retries), then start the workers and (with
        ``api``) the API."""
        self._wait_for_influx()
        self.dead_letters.reset_replays()
        self.metrics.register()
        self.writer.start()
        self.device_info.maybe_write()  # lifeline_device_info: map and variables of dashboards
        for worker in self.workers:
            worker.start()
        self.subscriber.start()
        if self.settings.api.enabled and api:
            self.api = ApiServer(self.create_app(), self.settings.api.host,
                                 self.settings.api.port)
            self.api.start()

    def create_app(self, engine: Engine | None = None, ha: HaView | None = None,
                   extra_collectors: Sequence[Collector] = ()) -> FastAPI:
        """The API app over this service's runtime objects (``engine``: the database the
        API reads and writes, default the service's)."""
        return create_app(
            self.settings, engine or self.db, self.ready_checks(),
            device_cache=self.registry,  # the devices API refreshes it on changes
            case_book=self.alerts.case_book(),  # case actions write lifeline_case
            outbox_wake=self.alerts.wake,
            rule_engine=self.pipeline.engine,  # GET /api/v1/rules
            rules_reload=self.reload_rules,  # POST /api/v1/rules/reload
            collectors=[RuntimeCollector(self.rule_evaluation, self.alerts.worker),
                        *extra_collectors], ha=ha)

    def ready_checks(self) -> dict[str, ReadyCheck]:
        """Readiness of each dependency, for ``/readyz``."""

        def broker() -> tuple[bool, str]:
            return self.subscriber.connected, "connected" if self.subscriber.connected else (
                "not connected")

        def influx() -> tuple[bool, str]:
            try:
                self.transport.ping()
            except WriteError as exc:
                return False, str(exc)
            return True, "answering"

        return {"broker": broker, "influxdb": influx, "database": database_check(self.db)}

    def _wait_for_influx(self) -> None:
        inf = self.settings.influx
        deadline = time.monotonic() + self.settings.mqtt.connect_timeout.seconds

        def ready() -> None:
            self.transport.ping()
            if inf.create_database and isinstance(self.transport, InfluxV1Transport):
                self.transport.create_database()

        def retrying(attempt: int, exc: Exception, delay: float) -> None:
            log.warning("InfluxDB at %s not answering (attempt %d); retrying in %.1fs",
                        inf.url, attempt, delay)

        try:
            retry_until(ready, Backoff(base_s=0.5, max_s=10.0),
                        retryable=lambda exc: isinstance(exc, WriteError),
                        deadline=deadline, on_retry=retrying)
        except RetriesExhaustedError as exc:
            raise StartupError(f"InfluxDB at {inf.url} unreachable after {exc.attempts} "
                               f"attempts: {exc.error}") from exc.error

    def step(self, replayed: list[RawMessage] | None = None,
             on_durable: Callable[[], None] | None = None) -> int:
        """Run one batch from the buffer (or ``replayed`` dead letters) through the pipeline.

        QoS 1/2 messages are acknowledged once their readings are in InfluxDB or the
        spool and their dead letters are stored: the writer calls back in order.
        """
        connects = self.subscriber.connects
        messages = replayed or self.buffer.drain(self.settings.ingest.batch_messages)
        if not messages:
            return 0
        callback = on_durable
        if callback is None and replayed is None:
            acks = [m for m in messages if m.qos]
            if acks:
                callback = functools.partial(self.subscriber.ack, acks)
        if self.term is not None and callback is not None:
            # active/standby: acknowledge once the readings are stored *and* the alert
            # transitions they caused are committed — a leader lost in between leaves the
            # messages to the broker, and the next leader evaluates them again
            join = Join(callback, 2)
            out = self.pipeline.step(messages, join.part)
            if out.rule_findings or out.device_findings:
                self.alerts.after_applied(join.part)
            else:
                join.part()
        else:
            out = self.pipeline.step(messages, callback)
        if replayed is None and len(out.decoded.batch):
            self._heard_on_connect = connects
        self.stats.findings += out.rule_findings
        return len(messages)

    def _count_decoded(self, result: DecodeResult) -> None:
        """Counters of one decoded batch (before it is stored, as before the pipeline
        object: ``lifeline bench ingest`` watches ``decoded_values``)."""
        self.stats.received += result.messages
        self.stats.decoded_values += len(result.batch)
        ing = self.ingest
        ing.received += result.messages
        ing.decoded += len(result.batch)
        ing.readings += result.readings
        ing.duplicates += result.duplicates
        ing.events += len(result.events)
        ing.statuses += len(result.statuses)
        ing.observe_batch(result.messages)

    def run(self, stop: threading.Event) -> None:
        """Process batches and the periodic tasks until ``stop`` is set, then drain and
        shut down."""
        interval = self.settings.ingest.flush_interval
        while not stop.is_set():
            if self.step() == 0:
                self.buffer.wait(interval)
            self.tasks.run_due()
        self.shutdown()

    def _devices_tick(self) -> None:
        """Silence checks and the ingest-path state of the device tracker."""
        self.alerts.process(self.devices.tick(self._ingest_connected(),
                                              self.subscriber.connects, self.clock.now_ns()))

    def _log_progress(self) -> None:
        log.info("received=%d stored=%d dead=%d findings=%d buffered=%d",
                 self.stats.received, self.stats.stored_lines,
                 self.stats.dead_lettered, self.stats.findings, len(self.buffer))

    def _ingest_connected(self) -> bool:
        """The MQTT connection as the device tracker sees it. On the event clock a
        (re)connect takes effect at the time of the first readings after it (the clock
        stands still while nothing arrives, and then jumps over the broker's backlog)."""
        connected = self.subscriber.connected
        if self.clock.event and self._heard_on_connect != self.subscriber.connects:
            return False
        return connected

    def request_rules_reload(self) -> None:
        """Ask the run loop to reload the rule files (safe from a signal handler)."""
        self.rules.request_reload()

    def reload_rules(self) -> tuple[int, int]:
        """Load the rule files again; unchanged rules keep their state. Returns (kept, new).

        Raises RulesError (the running rules stay) when a file is invalid.
        """
        return self.rules.reload()

    def replay_dead_letters(self) -> int:
        """Feed dead letters marked for replay (CLI/API) through the pipeline again."""
        try:
            letters = self.dead_letters.take_replays()
        except Exception as exc:
            log.error("cannot read dead letters to replay: %s", exc)
            return 0
        if not letters:
            return 0
        ids = [sl.id for sl in letters]
        messages = [RawMessage(sl.letter.topic, sl.letter.payload, sl.letter.received_at_ns)
                    for sl in letters]
        store, ing = self.dead_letters, self.ingest

        def done() -> None:
            store.finish_replays(ids)
            ing.dlq_replayed += len(ids)

        log.info("replaying %d dead letters", len(ids))
        self.step(messages, done)
        return len(ids)

    def write_self_metrics(self) -> None:
        """One ``lifeline_ingest`` point with the counters and queue depths."""
        self.writer.submit([ingest_line(self.ingest, self.writer.stats, self._ingest_gauges(),
                                        self.dead_letters.evicted, time.time_ns(),
                                        self.settings.mqtt.client_id)])
        self.writer.submit([service_metrics_line(self.stats, len(self.pipeline.engine.rules),
                                                 self.alerts.worker,
                                                 self.settings.mqtt.client_id, time.time_ns())])
        self.device_info.maybe_write()

    def shutdown(self) -> None:
        """Stop taking QoS 1/2 messages, process what was received, flush the writer
        (which acknowledges), then disconnect; webhooks last."""
        if self.api is not None:
            self.api.stop()
        self.subscriber.pause()
        while self.step():
            pass
        if self._saving is not None:  # a periodic save still running finishes first
            concurrent.futures.wait([self._saving], timeout=30)
        self._saver.shutdown(wait=False)
        self.rules.save_state()
        self.write_self_metrics()
        try:
            self.devices.flush()
        except LifelineError as exc:  # NotLeader: the next leader has the status it saved
            log.error("device status not saved at shutdown: %s", exc)
        for worker in self.workers:  # alerts: last clock tick, then webhooks that are due
            worker.stop()
        self.writer.stop()
        dedup = self.pipeline.decoder.dedup
        if self.shared is not None and dedup is not None and self.settings.ha.dedup_keys:
            try:  # every reading is stored now: the next leader gets the latest keys
                self.shared.save(DEDUP_KEYS, keys_to_json(dedup.recent(
                    self.settings.ha.dedup_keys)))
            except (LifelineError, OSError) as exc:
                log.error("cannot save de-duplication keys: %s", exc)
        if self.subscriber.connected:  # the session stays on the broker for the next run
            self.session_watch.record()
        self.subscriber.stop()
        self.metrics.unregister()
        self.transport.close()
        self.dead_letters.log_limiter.close()  # what the last window suppressed
        log.info("stopped: received=%d stored=%d dead=%d findings=%d",
                 self.stats.received, self.stats.stored_lines, self.stats.dead_lettered,
                 self.stats.findings)


def database_check(engine: Engine) -> ReadyCheck:
    """The ``/readyz`` check of the service database: a ``SELECT 1``."""

    def database() -> tuple[bool, str]:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:  # reported, not raised
            return False, type(exc).__name__
        return True, "answering"

    return database


def influx_transport(settings: Settings) -> InfluxV1Transport | InfluxV2Transport:
    """The InfluxDB transport (v1 or v2) from the settings."""
    inf = settings.influx
    if inf.version == 2:
        return InfluxV2Transport(inf.url, org=inf.org, bucket=inf.bucket,
                                 token=inf.token.get_secret_value(), gzip_body=inf.gzip,
                                 timeout=inf.timeout)
    return InfluxV1Transport(inf.url, inf.database, retention_policy=inf.retention_policy,
                             username=inf.username, password=inf.password.get_secret_value(),
                             gzip_body=inf.gzip, timeout=inf.timeout)
