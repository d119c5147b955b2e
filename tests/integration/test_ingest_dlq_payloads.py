"""Dead letters keep whole payloads up to ``ingest.max_payload_bytes``, so a replay is
faithful; a letter that had to be cut (an oversized message) is marked and never replayed."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from devices.model import Device
from devtools.harness import ManagedService
from ingest.deadletter import MIGRATIONS, DeadLetter, DeadLetterStore, Reason, dead_letters
from lifeline.db import create_db_engine, migrate, open_database
from lifeline.influxquery import count_values
from tests.integration.test_ingest_service import Running, make_settings
from tests.support import wait_for

pytestmark = pytest.mark.integration


def test_a_letter_over_64_kib_is_kept_whole_and_cut_ones_are_not_replayed(db_url: str) -> None:
    store = DeadLetterStore(open_database(db_url), max_payload=256 * 1024)
    big = b"{" + b" " * (200 * 1024) + b"}"
    huge = b"x" * (300 * 1024)
    store.add_many([DeadLetter("lifeline/a/telemetry", big, Reason.UNKNOWN_DEVICE, "d", 1),
                    DeadLetter("lifeline/b/telemetry", huge, Reason.OVERSIZED, "d", 2)])
    kept, cut = sorted(store.list(), key=lambda r: r.id)
    assert kept.letter.payload == big and not kept.truncated and kept.payload_size == len(big)
    assert len(cut.letter.payload) == 256 * 1024 and cut.truncated
    assert cut.payload_size == len(huge)
    assert store.request_replay(ids=[kept.id, cut.id]) == 1
    assert store.request_replay(reason="oversized") == 0
    assert [r.id for r in store.take_replays()] == [kept.id]


def test_letters_cut_before_the_migration_are_marked_not_replayable(db_url: str) -> None:
    engine = create_db_engine(db_url)
    assert migrate(engine, {"ingest": MIGRATIONS[:2]}) == {"ingest": 2}
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO dead_letters (received_at_ns, topic, payload, reason, detail, replay) "
            "VALUES (1, 't', :cut, 'not_json', 'd', 0), (2, 't', :small, 'not_json', 'd', 0)"),
            {"cut": b"x" * 65536, "small": b"{bad"})
    assert migrate(engine, {"ingest": MIGRATIONS}) == {"ingest": len(MIGRATIONS)}
    with engine.connect() as conn:
        rows = conn.execute(sa.select(dead_letters.c.payload_size, dead_letters.c.truncated)
                            .order_by(dead_letters.c.id)).all()
    assert [tuple(r) for r in rows] == [(65536, 1), (4, 0)]
    assert DeadLetterStore(engine).request_replay(reason="not_json") == 1
    engine.dispose()


def test_a_100_kib_message_replays_faithfully_through_the_service(
    tmp_path: Path, mosquitto: ManagedService, influxdb: ManagedService
) -> None:
    db = f"dlqbig{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, mosquitto.info.port, influxdb.info.url, db)
    now_ms = time.time_ns() // 1_000_000
    # one gateway array of 1,500 readings, about 100 KiB: more than the old 64 KiB cut
    readings = [{"ts": now_ms - 10_000 + i, "seq": i, "values": {"lel": 1.0 + i % 7}}
                for i in range(1500)]
    payload = orjson.dumps(readings)
    assert 64 * 1024 < len(payload) < settings.ingest.max_payload_bytes
    with Running(settings) as service:
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", mosquitto.info.port)
        client.loop_start()
        client.publish("lifeline/late-comer/telemetry", payload, qos=1).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        assert wait_for(lambda: service.stats.dead_lettered >= 1, 10)
        store = DeadLetterStore(service.db)
        (letter,) = store.list(reason="unknown_device")
        assert letter.letter.payload == payload and not letter.truncated
        service.device_store.create(Device("late-comer", "gas_alarm", grid="G1"))
        service.registry.invalidate("late-comer")
        assert store.request_replay(ids=[letter.id]) == 1
        assert wait_for(lambda: count_values(influxdb.info.url, db, ["gas_alarm"]) == 1500, 20)
        assert store.total() == 0
