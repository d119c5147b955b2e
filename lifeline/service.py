"""Service wiring: MQTT → decode → (InfluxDB writer ∥ rule engine → alerts → webhooks)."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy.exc import SQLAlchemyError

from alerts.store import open_alert_series
from devices.catalogue import Catalogue
from devices.registry import read_inventory
from devices.series import SeriesTable
from devices.store import CachedRegistry, DeviceStore
from devices.topics import TopicKind, TopicScheme
from ingest.batch import RawBuffer, RawMessage
from ingest.deadletter import DeadLetter, DeadLetterStore, Reason
from ingest.decode import DecodeLimits, Decoder
from ingest.errors import WriteError
from ingest.influx import InfluxV1Transport, InfluxV2Transport, InfluxWriter
from ingest.lineproto import batch_lines
from ingest.metrics import IngestCollector, IngestCounters, ingest_line
from ingest.netproc import ProcessSubscriber
from ingest.spool import Spool
from ingest.subscriber import MqttOptions, MqttSubscriber
from lifeline.alerting import AlertsRuntime, TrackerStateView
from lifeline.app import ApiServer, ReadyCheck, create_app
from lifeline.clock import ServiceClock, parse_instant_ns
from lifeline.dashboard_feed import DeviceInfoFeed, service_metrics_line
from lifeline.db import open_database
from lifeline.device_status import DeviceMonitor
from lifeline.errors import LifelineError
from lifeline.metrics import RuntimeCollector, rule_evaluation_histogram
from lifeline.mqtt_session import SessionWatch
from lifeline.settings import Settings
from rules.engine import RuleEngine
from rules.errors import RulesError
from rules.loader import load_rules
from rules.model import parse_duration_ns

log = logging.getLogger(__name__)


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


def mqtt_options(settings: Settings) -> MqttOptions:
    """Subscriber options from the settings."""
    m = settings.mqtt
    return MqttOptions(
        host=m.host, port=m.port, client_id=m.client_id, protocol=m.protocol, qos=m.qos,
        clean_start=m.clean_start,
        session_expiry_s=parse_duration_ns(m.session_expiry) // 1_000_000_000,
        keepalive_s=m.keepalive, username=m.username, password=m.password.get_secret_value(),
        tls=m.tls, tls_ca_file=m.tls_ca_file, shared_group=m.shared_group,
        connect_timeout_s=parse_duration_ns(m.connect_timeout) / 1e9,
        buffered_reads=m.buffered_reads,
    )


class Service:
    """The running service; built from settings, started, stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = ServiceStats()
        ck = settings.clock
        # timers follow wall time, or reading times for simulation/replay ([clock])
        self.clock = ServiceClock(ck.source, parse_instant_ns(ck.start) if ck.start else None,
                                  parse_duration_ns(settings.ingest.max_future))
        self._stop = threading.Event()
        catalogue = Catalogue.builtin()
        if settings.devices.catalogue:
            catalogue = Catalogue.load(settings.devices.catalogue, catalogue)
        self.catalogue = catalogue
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        self.db = open_database(settings.database_url)
        self.device_store = DeviceStore(self.db)
        if settings.devices.inventory:  # the inventory file is imported into the registry
            self.device_store.upsert_many(read_inventory(settings.devices.inventory, catalogue))
        self.registry = CachedRegistry(self.device_store)
        self.series = SeriesTable()
        self.scheme = TopicScheme(settings.mqtt.prefix)
        ing = settings.ingest
        self.decoder = Decoder(
            self.scheme, self.registry, catalogue, self.series,
            DecodeLimits(
                max_payload_bytes=ing.max_payload_bytes,
                max_future_ns=parse_duration_ns(ing.max_future),
                max_past_ns=parse_duration_ns(ing.max_past),
                dedup_window=ing.dedup_window,
            ),
        )
        self.rules = load_rules(settings.rules.paths)
        self.engine = RuleEngine(self.rules, self.series, timezone=settings.rules.timezone)
        self.rule_evaluation = rule_evaluation_histogram()  # /metrics
        self.rules_state = (settings.run_dir / settings.rules.state_file
                            if settings.rules.state_file else None)
        self._rules_reload = threading.Event()
        self._rules_tick_at = self._rules_save_at = time.monotonic()
        self._rules_tick_event_ns = self.clock.now_ns()
        # event clock: the connect (subscriber.connects) whose readings have moved the clock
        self._heard_on_connect = 0
        self._restore_rule_state()
        self.dead_letters = DeadLetterStore(self.db, max_rows=ing.dlq_max_rows,
                                            max_payload=ing.max_payload_bytes)
        inf = settings.influx
        self.transport: InfluxV1Transport | InfluxV2Transport
        if inf.version == 2:
            self.transport = InfluxV2Transport(
                inf.url, org=inf.org, bucket=inf.bucket, token=inf.token.get_secret_value(),
                gzip_body=inf.gzip, timeout=inf.timeout)
        else:
            self.transport = InfluxV1Transport(
                inf.url, inf.database, retention_policy=inf.retention_policy,
                username=inf.username, password=inf.password.get_secret_value(),
                gzip_body=inf.gzip, timeout=inf.timeout,
            )
        self.spool = Spool(ing.spool_dir or settings.run_dir / "spool", ing.spool_max_bytes,
                           fsync=ing.spool_fsync)
        self.writer = InfluxWriter(self.transport, batch_lines=inf.batch_lines,
                                   flush_interval=inf.flush_interval, retries=inf.retries,
                                   spool=self.spool, on_written=self._on_written,
                                   on_rejected=self._on_rejected)
        self.ingest = IngestCounters()
        self.metrics = IngestCollector(self.ingest, self.writer.stats, self._ingest_gauges,
                                       lambda: self.dead_letters.evicted)
        self.alerts = AlertsRuntime(settings, self.db, self.registry, self.writer.submit)
        self.alerts.pipeline.clock = self.clock.now_ns
        self.devices = DeviceMonitor(self.device_store, self.registry, catalogue, self.series,
                                     self.writer.submit, settings.devices,
                                     now_ns=self.clock.now_ns())
        self.alerts.use_device_state(TrackerStateView(self.devices.tracker))  # inhibition
        self.device_info = DeviceInfoFeed(self.registry.__iter__, self.writer.submit)
        self.buffer = RawBuffer(wake_at=ing.batch_messages, limit=ing.raw_buffer_max)
        options = mqtt_options(settings)
        # the persistent session: lost → counted, warned, service alert (and across restarts)
        self.session_watch = SessionWatch(options, settings.run_dir, self.ingest,
                                          self.alerts.process, self.clock.now_ns)
        options = replace(options, expect_session=self.session_watch.expected_at_start())
        subscriber_class = ProcessSubscriber if settings.mqtt.network_process else MqttSubscriber
        self.subscriber: MqttSubscriber | ProcessSubscriber = subscriber_class(
            options,
            [self.scheme.subscription(kind) for kind in TopicKind],
            self.buffer,
        )
        log.info("loaded %d devices, %d rules", len(self.registry), len(self.rules))

    def _on_written(self, lines: int) -> None:
        self.stats.stored_lines += lines

    def _on_rejected(self, lines: list[str], error: str) -> None:
        """InfluxDB refused these lines as malformed: keep them as dead letters."""
        now = time.time_ns()
        self._store_dead([DeadLetter("influx:write", line.encode(), Reason.WRITE_REJECTED,
                                     error, now) for line in lines])

    def _store_dead(self, letters: list[DeadLetter]) -> None:
        """Store dead letters, retrying while the database is away (holds the pipeline)."""
        delay = 0.1
        while True:
            try:
                self.stats.dead_lettered += self.dead_letters.add_many(letters)
            except Exception as exc:  # database errors: never drop the letters
                log.error("dead-letter store unavailable (%d letters waiting): %s",
                          len(letters), exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for dl in letters:
                self.ingest.dead_by_reason[dl.reason.value] += 1
            return

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

    def start(self) -> None:
        """Reach InfluxDB and the broker (with retries), then start the workers and API."""
        self._wait_for_influx()
        self.dead_letters.reset_replays()
        self.metrics.register()
        self.writer.start()
        self.device_info.maybe_write()  # lifeline_device_info: map and variables of dashboards
        self.alerts.start()
        self.subscriber.start()
        if self.settings.api.enabled:
            app = create_app(self.settings, self.db, self.ready_checks())
            app.state.device_cache = self.registry  # the devices API refreshes it on changes
            app.state.case_book = self.alerts.case_book()  # case actions write lifeline_case
            app.state.outbox_wake = self.alerts.wake
            app.state.rule_engine = self.engine  # GET /api/v1/rules
            app.state.rules_reload = self.reload_rules  # POST /api/v1/rules/reload
            app.state.metrics_registry.register(
                RuntimeCollector(self.rule_evaluation, self.alerts.worker))
            self.api = ApiServer(app, self.settings.api.host, self.settings.api.port)
            self.api.start()

    api: ApiServer | None = None

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

        def database() -> tuple[bool, str]:
            try:
                with self.db.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
            except Exception as exc:
                return False, type(exc).__name__
            return True, "answering"

        return {"broker": broker, "influxdb": influx, "database": database}

    def _wait_for_influx(self) -> None:
        inf = self.settings.influx
        deadline = time.monotonic() + parse_duration_ns(self.settings.mqtt.connect_timeout) / 1e9
        delay = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                self.transport.ping()
                if inf.create_database and isinstance(self.transport, InfluxV1Transport):
                    self.transport.create_database()
                return
            except WriteError as exc:
                if time.monotonic() + delay > deadline:
                    raise StartupError(
                        f"InfluxDB at {inf.url} unreachable after {attempt} attempts: {exc}"
                    ) from exc
                log.warning("InfluxDB at %s not answering (attempt %d); retrying in %.1fs",
                            inf.url, attempt, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def step(self, replayed: list[RawMessage] | None = None,
             on_durable: Callable[[], None] | None = None) -> int:
        """Decode and dispatch one batch from the buffer (or ``replayed`` dead letters).

        QoS 1/2 messages are acknowledged once their readings are in InfluxDB or the
        spool and their dead letters are stored: the writer calls back in order.
        """
        connects = self.subscriber.connects
        messages = replayed or self.buffer.drain(self.settings.ingest.batch_messages)
        if not messages:
            return 0
        result = self.decoder.decode(messages)
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
        if result.dead:
            self._store_dead(result.dead)
        callback = on_durable
        if callback is None and replayed is None:
            acks = [m for m in messages if m.qos]
            if acks:
                callback = functools.partial(self.subscriber.ack, acks)
        self.writer.submit(batch_lines(result.batch, self.series), callback)
        self.clock.observe(result.batch.ts_ns)
        if replayed is None and len(result.batch):
            self._heard_on_connect = connects
        started = time.perf_counter()
        findings = self.engine.evaluate(result.batch)
        self.rule_evaluation.labels("batch").observe(time.perf_counter() - started)
        self.stats.findings += len(findings)
        if findings:
            self.alerts.process(findings)
        device_findings = self.devices.process(result, self.clock.now_ns())  # events, offline
        if device_findings:
            self.alerts.process(device_findings)
        return len(messages)

    def run(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set, then drain and shut down."""
        interval = self.settings.ingest.flush_interval
        last_report = time.monotonic()
        metrics_every = parse_duration_ns(self.settings.ingest.metrics_interval) / 1e9
        last_metrics = last_replay = time.monotonic()
        while not stop.is_set():
            if self.step() == 0:
                self.buffer.wait(interval)
            now = time.monotonic()
            if now - last_replay >= 1.0:
                last_replay = now
                self.replay_dead_letters()
            tick_findings = self.devices.tick(self._ingest_connected(),
                                              self.subscriber.connects, self.clock.now_ns())
            if tick_findings:
                self.alerts.process(tick_findings)
            self.session_watch.check(self.subscriber)
            self.rules_housekeeping(now)
            if now - last_metrics >= metrics_every:
                last_metrics = now
                self.write_self_metrics()
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                log.info("received=%d stored=%d dead=%d findings=%d buffered=%d",
                         self.stats.received, self.stats.stored_lines,
                         self.stats.dead_lettered, self.stats.findings, len(self.buffer))
        self.shutdown()

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
        self._rules_reload.set()

    def reload_rules(self) -> tuple[int, int]:
        """Load the rule files again; unchanged rules keep their state. Returns (kept, new).

        Raises RulesError (the running rules stay) when a file is invalid.
        """
        rules = load_rules(self.settings.rules.paths)
        kept, new = self.engine.reload(rules)
        self.rules = rules
        return kept, new

    def rules_housekeeping(self, now: float) -> None:
        """Pending reload, time-driven rules (stale) and periodic state saves."""
        if self._rules_reload.is_set():
            self._rules_reload.clear()
            try:
                self.reload_rules()
            except RulesError as exc:
                log.error("rule reload failed, keeping the running rules: %s", exc)
        rs = self.settings.rules
        tick_ns = parse_duration_ns(rs.tick_interval)
        event_ns = self.clock.now_ns()
        if (now - self._rules_tick_at >= tick_ns / 1e9
                or (self.clock.event and event_ns - self._rules_tick_event_ns >= tick_ns)):
            self._rules_tick_at, self._rules_tick_event_ns = now, event_ns
            started = time.perf_counter()
            findings = self.engine.tick(event_ns)
            self.rule_evaluation.labels("tick").observe(time.perf_counter() - started)
            self.stats.findings += len(findings)
            if findings:
                self.alerts.process(findings)
        if now - self._rules_save_at >= parse_duration_ns(rs.save_interval) / 1e9:
            self._rules_save_at = now
            self.save_rule_state()

    def save_rule_state(self) -> None:
        """Write the rule state to ``rules.state_file`` (errors are logged, not raised)."""
        if self.rules_state is None:
            return
        try:
            self.engine.save_state(self.rules_state)
        except (OSError, RulesError) as exc:
            log.error("cannot save rule state to %s: %s", self.rules_state, exc)

    def _restore_rule_state(self) -> None:
        if self.rules_state is not None and self.rules_state.exists():
            try:
                self.engine.restore_state(self.rules_state, self.registry.get,
                                          self.clock.now_ns())
            except RulesError as exc:
                log.error("rule state not restored, starting from zero: %s", exc)
        self._align_with_open_alerts()

    def _align_with_open_alerts(self) -> None:
        """The saved rule state may be older than the alerts (a crash since the last
        save): the rules fire for exactly the open alerts, so each can still resolve."""
        try:
            with self.db.connect() as conn:
                open_series = open_alert_series(conn)
        except SQLAlchemyError as exc:
            log.error("cannot read the open alerts to align the rule state: %s", exc)
            return
        changed = self.engine.sync_firing(open_series, self.registry.get)
        if changed:
            log.warning("rule state aligned with the open alerts: %d series changed", changed)

    def replay_dead_letters(self) -> int:
        """Feed dead letters marked for replay (CLI/API) through the decoder again."""
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
        self.writer.submit([service_metrics_line(self.stats, len(self.rules), self.alerts.worker,
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
        self.save_rule_state()
        self.write_self_metrics()
        self.devices.flush()
        self.alerts.stop()  # last clock tick, then webhooks that are due (bounded wait)
        self.writer.stop()
        if self.subscriber.connected:  # the session stays on the broker for the next run
            self.session_watch.record()
        self.subscriber.stop()
        self.metrics.unregister()
        self.transport.close()
        self.dead_letters.log_limiter.close()  # what the last window suppressed
        log.info("stopped: received=%d stored=%d dead=%d findings=%d",
                 self.stats.received, self.stats.stored_lines, self.stats.dead_lettered,
                 self.stats.findings)
