"""Service wiring: MQTT → decode → (InfluxDB writer ∥ rule engine → alerts → webhooks)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from alerts.alerting import AlertStage
from alerts.webhook import DeliveryWorker, HttpNotifier, WebhookEvent
from devices.catalogue import Catalogue
from devices.registry import MemoryRegistry, read_inventory
from devices.series import SeriesTable
from devices.topics import TopicKind, TopicScheme
from ingest.batch import RawBuffer
from ingest.deadletter import DeadLetterStore
from ingest.decode import DecodeLimits, Decoder
from ingest.errors import WriteError
from ingest.influx import InfluxV1Transport, InfluxWriter
from ingest.lineproto import batch_lines
from ingest.subscriber import MqttOptions, MqttSubscriber
from lifeline.app import ApiServer, ReadyCheck, create_app
from lifeline.db import open_database
from lifeline.errors import LifelineError
from lifeline.settings import Settings
from rules.engine import RuleEngine
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
    )


class Service:
    """The running service; built from settings, started, stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = ServiceStats()
        self._stop = threading.Event()
        catalogue = Catalogue.builtin()
        if settings.devices.catalogue:
            catalogue = Catalogue.load(settings.devices.catalogue, catalogue)
        self.catalogue = catalogue
        devices = (read_inventory(settings.devices.inventory, catalogue)
                   if settings.devices.inventory else [])
        self.registry = MemoryRegistry(devices)
        self.series = SeriesTable()
        self.scheme = TopicScheme(settings.mqtt.prefix)
        ing = settings.ingest
        self.decoder = Decoder(
            self.scheme, self.registry, catalogue, self.series,
            DecodeLimits(
                max_payload_bytes=ing.max_payload_bytes,
                max_future_ns=parse_duration_ns(ing.max_future),
                max_past_ns=parse_duration_ns(ing.max_past),
            ),
        )
        self.rules = load_rules(settings.rules.paths)
        self.engine = RuleEngine(self.rules, self.series)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        self.db = open_database(settings.database_url)
        self.dead_letters = DeadLetterStore(self.db)
        inf = settings.influx
        if inf.version != 1:
            raise StartupError("influx.version = 2 is not supported yet; use 1")
        self.transport = InfluxV1Transport(
            inf.url, inf.database, retention_policy=inf.retention_policy,
            username=inf.username, password=inf.password.get_secret_value(), gzip_body=inf.gzip,
        )
        self.writer = InfluxWriter(self.transport, batch_lines=inf.batch_lines,
                                   flush_interval=inf.flush_interval,
                                   on_written=self._on_written)
        self.delivery: DeliveryWorker | None = None
        if settings.webhook.url:
            self.delivery = DeliveryWorker(
                HttpNotifier(settings.webhook.url, settings.webhook.secret.get_secret_value(),
                             timeout=settings.webhook.timeout),
                max_attempts=settings.webhook.max_attempts,
            )
        self.alerts = AlertStage(self.registry, self._emit, self.writer.submit)
        self.buffer = RawBuffer(wake_at=ing.batch_messages)
        self.subscriber = MqttSubscriber(
            mqtt_options(settings),
            [self.scheme.subscription(TopicKind.TELEMETRY)],
            self.buffer,
        )
        log.info("loaded %d devices, %d rules", len(self.registry), len(self.rules))

    def _emit(self, event: WebhookEvent) -> None:
        if self.delivery is not None:
            self.delivery.enqueue(event)

    def _on_written(self, lines: int) -> None:
        self.stats.stored_lines += lines

    def start(self) -> None:
        """Reach InfluxDB and the broker (with retries), then start the workers and API."""
        self._wait_for_influx()
        self.writer.start()
        if self.delivery is not None:
            self.delivery.start()
        self.subscriber.start()
        if self.settings.api.enabled:
            app = create_app(self.settings, self.db, self.ready_checks())
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
                if inf.create_database:
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

    def step(self) -> int:
        """Decode and dispatch one batch from the buffer; returns messages handled."""
        messages = self.buffer.drain(self.settings.ingest.batch_messages)
        if not messages:
            return 0
        result = self.decoder.decode(messages)
        self.stats.received += result.messages
        self.stats.decoded_values += len(result.batch)
        if result.dead:
            self.stats.dead_lettered += self.dead_letters.add_many(result.dead)
        self.writer.submit(batch_lines(result.batch, self.series))
        findings = self.engine.evaluate(result.batch)
        self.stats.findings += len(findings)
        if findings:
            self.alerts.process(findings)
        return len(messages)

    def run(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set, then drain and shut down."""
        interval = self.settings.ingest.flush_interval
        last_report = time.monotonic()
        while not stop.is_set():
            if self.step() == 0:
                self.buffer.wait(interval)
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                log.info("received=%d stored=%d dead=%d findings=%d buffered=%d",
                         self.stats.received, self.stats.stored_lines,
                         self.stats.dead_lettered, self.stats.findings, len(self.buffer))
        self.shutdown()

    def shutdown(self) -> None:
        """Stop receiving, process what was received, flush the writer and webhooks."""
        if self.api is not None:
            self.api.stop()
        self.subscriber.stop()
        while self.step():
            pass
        self.writer.stop()
        if self.delivery is not None:
            self.delivery.stop()
        self.transport.close()
        log.info("stopped: received=%d stored=%d dead=%d findings=%d",
                 self.stats.received, self.stats.stored_lines, self.stats.dead_lettered,
                 self.stats.findings)
