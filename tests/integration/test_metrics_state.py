"""``/metrics``: what an operator alerts on, read back from the exposition and compared
with the database after a scripted scenario (real SQLite and PostgreSQL, the real app,
a real HTTP receiver for the webhooks)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from alerts.cases.store import cases
from alerts.delivery.outbox import DeliveryConfig, OutboxWorker
from alerts.delivery.store import outbox
from alerts.delivery.webhook import HttpNotifier
from alerts.lifecycle.model import AlertConfig
from alerts.lifecycle.pipeline import AlertPipeline
from alerts.lifecycle.store import alerts
from devices.model import Device
from devices.registry import MemoryRegistry, write_inventory
from devices.status import DeviceState, LinkStatus
from devices.store import DeviceStore
from devtools.harness import ManagedService
from ingest.deadletter import DeadLetter, DeadLetterStore, Reason
from lifeline.alerting import case_config
from lifeline.app import create_app
from lifeline.auth import new_token, token_digest
from lifeline.db import open_database
from lifeline.metrics import RuntimeCollector, rule_evaluation_histogram
from lifeline.service import Service
from lifeline.settings import (
    ApiSettings,
    ApiToken,
    DevicesSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
    Settings,
    load_settings,
)
from rules.model import Finding, FindingState, Severity
from tests.support import wait_for

pytestmark = pytest.mark.integration
HOUR_NS = 3600 * 10**9


class Receiver:
    """Dispatch-system stand-in: refuses the first webhook for good (400), takes the rest."""

    def __init__(self) -> None:
        self.seen = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.seen += 1
                self.send_response(400 if receiver.seen == 1 else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _by_label(family: Any, label: str, sample_name: str | None = None) -> dict[str, float]:
    name = sample_name or family.name
    return {s.labels[label]: s.value for s in family.samples if s.name == name}


def _sample(family: Any, suffix: str, **labels: str) -> Sample:
    found = [s for s in family.samples if s.name == family.name + suffix
             and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (family.name, suffix, labels, family.samples)
    sample: Sample = found[0]
    return sample


def test_metrics_show_alerts_cases_outbox_dead_letters_and_devices_as_stored(
        db_url: str, tmp_path: Path, receiver: Receiver) -> None:
    token = new_token()
    settings = load_settings(None, run_dir=tmp_path, api={"tokens": [
        {"name": "prom", "role": "viewer", "sha256": token_digest(token)}]},
        webhook={"url": receiver.url, "secret": "s" * 24})
    engine = open_database(db_url)
    now = time.time_ns()
    # devices: two online, one offline, one never heard from, one disabled (not counted)
    store = DeviceStore(engine)
    fleet = [Device("gas-1", "gas_alarm", grid="G1", lat=31.2, lon=121.4),
             Device("gas-2", "gas_alarm", grid="G1", lat=31.3, lon=121.5),
             Device("p-1", "water_pressure", grid="W1", lat=31.1, lon=121.3),
             Device("p-2", "water_pressure", grid="W1"),
             Device("old-1", "gas_alarm", grid="G1", enabled=False)]
    for d in fleet:
        store.create(d)
    store.save_states([DeviceState("gas-1", LinkStatus.ONLINE, now, now),
                       DeviceState("gas-2", LinkStatus.OFFLINE, now, now - HOUR_NS, "silence"),
                       DeviceState("p-1", LinkStatus.ONLINE, now, now),
                       DeviceState("old-1", LinkStatus.OFFLINE, now, None)])
    # alerts: one critical firing (its case is dispatched at once), one minor (its case is
    # reported), one warning that fired and resolved; ten minutes later the clock passes
    # the critical case's 5 min dispatch deadline (超期), not the minor's 1 h one
    pipeline = AlertPipeline(engine, MemoryRegistry(fleet), AlertConfig(resolve_delay_ns=0),
                             case_config(settings))
    pipeline.process([
        Finding("minor-low", "p-1", "pressure", FindingState.FIRING, Severity.MINOR, now, 0.1),
        Finding("lel", "gas-1", "lel", FindingState.FIRING, Severity.CRITICAL, now, 60.0),
        Finding("co", "gas-2", "co_ppm", FindingState.FIRING, Severity.WARNING, now, 40.0),
        Finding("co", "gas-2", "co_ppm", FindingState.RESOLVED, Severity.WARNING, now, 5.0),
    ])
    pipeline.tick(now + 10 * 60 * 10**9)
    # webhooks: one attempt refused for good (dead), one delivered, the rest pending
    worker = OutboxWorker(engine, HttpNotifier(receiver.url, "s" * 24, timeout=5),
                          config=DeliveryConfig(concurrency=1))
    for expected in (1, 2):
        worker.run_once()
        assert wait_for(lambda n=expected: receiver.seen == n  # type: ignore[misc]
                        and worker.stats.dead + worker.stats.delivered == n, 10)
    worker.stop(timeout=0)
    assert worker.stats.dead == 1 and worker.stats.delivered == 1
    # dead letters of two reasons
    DeadLetterStore(engine).add_many([
        DeadLetter("lifeline/x/telemetry", b"{", Reason.NOT_JSON, "bad", now),
        DeadLetter("lifeline/y/telemetry", b"{", Reason.NOT_JSON, "bad", now),
        DeadLetter("lifeline/who/telemetry", b"{}", Reason.UNKNOWN_DEVICE, "who", now)])

    hist = rule_evaluation_histogram()
    hist.labels("batch").observe(0.002)
    app = create_app(settings, engine,
                     collectors=[RuntimeCollector(hist, worker)])  # as the service does
    client = TestClient(app)
    assert client.get("/metrics").status_code == 401
    resp = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    scraped_at = time.time_ns()
    fam = _families(resp.text)

    with engine.connect() as conn:
        firing: dict[str, int] = dict(conn.execute(
            sa.select(alerts.c.severity, sa.func.count()).where(alerts.c.state == "firing")
            .group_by(alerts.c.severity)).all())
        states: dict[str, int] = dict(conn.execute(sa.select(cases.c.state, sa.func.count())
                                   .group_by(cases.c.state)).all())
        pending, oldest = conn.execute(sa.select(sa.func.count(), sa.func.min(
            outbox.c.created_ns)).where(outbox.c.status == "pending")).one()
        dead = conn.execute(sa.select(sa.func.count()).where(
            outbox.c.status == "dead")).scalar_one()
    assert firing == {"critical": 1, "minor": 1}
    assert states == {"dispatched": 1, "reported": 1}
    assert pending >= 1 and dead == 1

    f = fam["lifeline_alerts_firing"]
    assert f.type == "gauge"
    assert _by_label(f, "severity") == {"info": 0, "warning": 0, "minor": 1, "major": 0,
                                        "critical": 1}
    f = fam["lifeline_cases_open"]
    assert f.type == "gauge"
    open_cases = _by_label(f, "state")
    assert "closed" not in open_cases and "cancelled" not in open_cases
    assert {k: v for k, v in open_cases.items() if v} == {"dispatched": 1, "reported": 1}
    assert set(open_cases) == {"reported", "registered", "dispatched", "in_progress",
                               "handled", "verified", "returned", "rework"}
    late = _by_label(fam["lifeline_cases_overdue"], "state")
    assert {k: v for k, v in late.items() if v} == {"dispatched": 1}
    assert fam["lifeline_webhook_outbox_pending"].samples[0].value == pending
    assert fam["lifeline_webhook_outbox_dead"].samples[0].value == 1
    age = fam["lifeline_webhook_outbox_oldest_pending_age_seconds"]
    assert age.type == "gauge"
    expected_age = (scraped_at - oldest) / 1e9
    assert expected_age - 30 <= age.samples[0].value <= expected_age
    f = fam["lifeline_dead_letters"]
    assert f.type == "gauge"
    letters = _by_label(f, "reason")
    assert letters["not_json"] == 2 and letters["unknown_device"] == 1
    assert sum(letters.values()) == 3 and "dlq_overflow" not in letters
    f = fam["lifeline_devices"]
    assert f.type == "gauge"
    assert _by_label(f, "link") == {"online": 2, "offline": 1, "unknown": 1}
    assert fam["lifeline_database_up"].samples[0].value == 1
    # runtime: delivery latency histogram and counters, rule evaluation histogram
    f = fam["lifeline_webhook_delivery_latency_seconds"]
    assert f.type == "histogram"
    assert _sample(f, "_count").value == 1
    assert _sample(f, "_bucket", le="+Inf").value == 1
    assert fam["lifeline_webhook_delivered"].type == "counter"
    assert _sample(fam["lifeline_webhook_delivered"], "_total").value == 1
    assert _sample(fam["lifeline_webhook_dead_lettered"], "_total").value == 1
    f = fam["lifeline_rule_evaluation_seconds"]
    assert f.type == "histogram"
    assert _sample(f, "_count", trigger="batch").value == 1
    # every family of this module follows the naming rules
    for name, family in fam.items():
        if name.startswith("lifeline_") and family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)


def test_running_service_times_rule_evaluation_and_serves_everything_on_metrics(
        tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService) -> None:
    """The real service: its API's /metrics (over HTTP) has the ingest families, the
    database state and the rule evaluation histogram fed by the readings it evaluated."""
    token = new_token()
    inventory = tmp_path / "inventory.csv"
    write_inventory(inventory, [Device("gas-m1", "gas_alarm", grid="G1")])
    settings = Settings(
        run_dir=tmp_path / "run",
        mqtt=MqttSettings(port=mosquitto.info.port, client_id=f"metrics-{uuid.uuid4().hex[:6]}",
                          qos=1),
        influx=InfluxSettings(url=influxdb.info.url, database=f"m{uuid.uuid4().hex[:8]}",
                              flush_interval=0.05, retries=1),
        ingest=IngestSettings(metrics_interval="1h", spool_fsync=False, flush_interval=0.05),
        devices=DevicesSettings(inventory=inventory),
        api=ApiSettings(port=0, tokens=[ApiToken(name="prom", role="viewer",
                                                 sha256=token_digest(token))]),
    )
    service = Service(settings)
    stop = threading.Event()

    def run() -> None:
        service.start()
        service.run(stop)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert service.subscriber.subscribed.wait(30)
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", mosquitto.info.port)
        client.loop_start()
        client.publish("lifeline/gas-m1/telemetry", orjson.dumps(
            {"ts": time.time_ns() // 1_000_000, "values": {"lel": 60.0}}), qos=1
        ).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        assert wait_for(lambda: service.stats.decoded_values >= 1, 15)
        assert wait_for(lambda: service.api is not None and service.api.port is not None, 10)
        assert service.api is not None
        url = f"http://127.0.0.1:{service.api.port}/metrics"
        resp = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert resp.status_code == 200
        fam = _families(resp.text)
        f = fam["lifeline_rule_evaluation_seconds"]
        assert f.type == "histogram"
        assert _sample(f, "_count", trigger="batch").value >= 1
        assert _sample(f, "_bucket", trigger="batch", le="+Inf").value >= 1
        assert _sample(fam["lifeline_ingest_received"], "_total").value >= 1
        assert _by_label(fam["lifeline_devices"], "link")["unknown"] + _by_label(
            fam["lifeline_devices"], "link")["online"] == 1
        assert wait_for(lambda: _by_label(_families(httpx.get(
            url, headers={"Authorization": f"Bearer {token}"}, timeout=10).text)[
            "lifeline_alerts_firing"], "severity")["critical"] == 1, 15)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
