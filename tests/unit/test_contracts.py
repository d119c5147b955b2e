"""Small contracts: topics, signatures, line protocol, catalogue, inventory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alerts.delivery.signing import sign, verify
from alerts.delivery.webhook import WebhookEvent, is_retryable_status
from devices.catalogue import Catalogue
from devices.errors import CatalogueError, InventoryError
from devices.model import Device
from devices.registry import read_inventory, write_inventory
from devices.series import SeriesTable
from devices.topics import TopicKind, TopicScheme
from ingest.batch import Batch
from ingest.lineproto import batch_lines


def test_topic_scheme_round_trip_and_rejections() -> None:
    scheme = TopicScheme("city/lifeline")
    topic = scheme.topic("gas-1", TopicKind.TELEMETRY)
    assert topic == "city/lifeline/gas-1/telemetry"
    parsed = scheme.parse(topic)
    assert parsed is not None and parsed.device_id == "gas-1"
    assert scheme.subscription(TopicKind.STATUS) == "city/lifeline/+/status"
    for bad in ("city/lifeline/gas-1/other", "city/gas-1/telemetry", "city/lifeline/#/event",
                "city/lifeline/" + "x" * 65 + "/event", "city/lifeline/a b/event",
                "city/lifeline/../status", "city/lifeline/gas-1/telemetry/x"):
        assert scheme.parse(bad) is None


def test_signature_matches_the_contract() -> None:
    body = b'{"event":"alert.firing"}'
    sig = sign("k" * 16, "1700000000", body)
    import hashlib
    import hmac
    expected = hmac.new(b"k" * 16, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sig == "sha256=" + expected
    assert verify("k" * 16, "1700000000", body, sig)
    assert not verify("k" * 16, "1700000001", body, sig)
    assert not verify("x" * 16, "1700000000", body, sig)


def test_retry_classification() -> None:
    assert [is_retryable_status(s) for s in (500, 503, 408, 429, 400, 401, 404, 409)] == [
        True, True, True, True, False, False, False, False]


def test_event_body_has_contract_keys() -> None:
    import datetime as dt

    import orjson
    ev = WebhookEvent.new("alert.firing", {"alert": {"device": "d"}, "case": None})
    doc = orjson.loads(ev.body(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)))
    assert set(doc) == {"event_id", "event", "sent_at", "alert", "case"}
    assert doc["sent_at"] == "2026-01-01T00:00:00Z"


def test_line_protocol_escapes_tags_and_flags() -> None:
    table = SeriesTable()
    sid = table.id_for(Device("g,1", "gas_alarm", grid="G 1", district="a=b", unit="u"), "lel")
    batch = Batch(series=np.array([sid, sid], dtype=np.int64),
                  ts_ns=np.array([1, 2], dtype=np.int64),
                  value=np.array([1.0, 2.5]), flags=np.array([0, 2], dtype=np.uint16))
    assert batch_lines(batch, table) == [
        r"gas_alarm,device=g\,1,grid=G\ 1,district=a\=b,unit=u lel=1.0 1",
        r"gas_alarm,device=g\,1,grid=G\ 1,district=a\=b,unit=u lel=2.5,flags=2i 2",
    ]


def test_catalogue_builtin_and_bad_files(tmp_path: Path) -> None:
    cat = Catalogue.builtin()
    assert cat["gas_alarm"].metrics["lel"].factor("ppm") == 0.002
    assert cat["gas_alarm"].metrics["lel"].factor("%vol") == 20.0
    assert cat["gas_alarm"].metrics["lel"].factor("furlong") is None
    bad = tmp_path / "c.toml"
    bad.write_text("[x]\ndescription = 1\n")
    with pytest.raises(CatalogueError, match="metrics"):
        Catalogue.load(bad, cat)
    bad.write_text("[x.metrics.m]\nunit = \"u\"\ndevice_units = { a = -1 }\n")
    with pytest.raises(CatalogueError, match="> 0"):
        Catalogue.load(bad, cat)
    bad.write_text("[x.metrics.m\n")
    with pytest.raises(CatalogueError, match="line 1"):
        Catalogue.load(bad, cat)


def test_inventory_round_trip_and_bad_rows(tmp_path: Path) -> None:
    cat = Catalogue.builtin()
    devices = [Device("gas-1", "gas_alarm", "G1", "d1", "gasco", "kitchen, 3F"),
               Device("wp-1", "water_pressure")]
    path = tmp_path / "inv.csv"
    write_inventory(path, devices)
    assert read_inventory(path, cat) == devices
    path.write_text("id,type\nok-1,gas_alarm\nbad id,gas_alarm\nx-2,toaster\n")
    with pytest.raises(InventoryError) as info:
        read_inventory(path, cat)
    assert "line 3" in str(info.value) and "line 4" in str(info.value)
    path.write_text("name\nx\n")
    with pytest.raises(InventoryError, match="missing columns"):
        read_inventory(path, cat)
