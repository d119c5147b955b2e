"""Generated broker configuration and the session bookkeeping, without a broker.

The broker side is tested against a real Mosquitto in
``tests/integration/test_mqtt_session.py``; here: the configuration text, the
expectation across restarts, and the MQTT 5 "session taken over" disconnect (which
Mosquitto 2.0.11 does not send: it closes the old connection without a reason).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from devices.mqttacl import AclError, ListenerTls, broker_config_text
from ingest.batch import RawBuffer
from ingest.influx import WriterStats
from ingest.metrics import IngestCounters, ingest_line
from ingest.subscriber import MqttOptions, MqttSubscriber
from lifeline.mqtt_session import SESSION_RULE, STATE_FILE, SessionWatch
from rules.model import Finding, FindingState


def test_every_generated_listener_binds_client_ids_to_user_names(tmp_path: Path) -> None:
    text = broker_config_text(tmp_path / "passwd", tmp_path / "acl",
                              ["1883 127.0.0.1", "8883"],
                              ListenerTls(tmp_path / "s.crt", tmp_path / "s.key"))
    blocks = text.split("\nlistener ")[1:]
    assert [b.splitlines()[0] for b in blocks] == ["1883 127.0.0.1", "8883"]
    for block in blocks:
        lines = block.splitlines()
        assert "use_username_as_clientid true" in lines
        assert "allow_anonymous false" in lines
        assert f"password_file {tmp_path / 'passwd'}" in lines
        assert f"acl_file {tmp_path / 'acl'}" in lines
        assert f"certfile {tmp_path / 's.crt'}" in lines and not any(
            line.startswith("cafile") for line in lines)
    body = broker_config_text(tmp_path / "passwd", tmp_path / "acl", [])
    assert not any(line.startswith("listener") for line in body.splitlines())
    assert body.rstrip().endswith("use_username_as_clientid true")
    for bad in ("1883; x", "port", "1883 a b", "1883\nlistener 1"):
        with pytest.raises(AclError):
            broker_config_text(tmp_path / "passwd", tmp_path / "acl", [bad])
    with pytest.raises(AclError):
        broker_config_text(tmp_path / "a b" / "passwd", tmp_path / "acl")


@dataclass
class Counts:
    connected: bool = True
    sessions_lost: int = 0
    sessions_taken_over: int = 0
    sessions_kept: int = 0


def watch(tmp_path: Path, **options: Any) -> tuple[SessionWatch, list[Finding]]:
    raised: list[Finding] = []
    opts = replace(MqttOptions(client_id="svc", username="svc", session_expiry_s=60),
                   **options)
    return SessionWatch(opts, tmp_path, IngestCounters(), raised.extend, lambda: 7), raised


def test_the_session_is_expected_after_a_restart_only_when_it_can_still_be_there(
        tmp_path: Path) -> None:
    w, _ = watch(tmp_path)
    assert not w.expected_at_start()  # never connected
    w.record()
    assert w.expected_at_start()
    assert not watch(tmp_path, client_id="other")[0].expected_at_start()
    assert not watch(tmp_path, port=1884)[0].expected_at_start()
    assert not watch(tmp_path, clean_start=True)[0].expected_at_start()
    state = orjson.loads((tmp_path / STATE_FILE).read_bytes())
    state["connected_ns"] = time.time_ns() - 61 * 1_000_000_000  # past the session expiry
    (tmp_path / STATE_FILE).write_bytes(orjson.dumps(state))
    assert not w.expected_at_start()
    (tmp_path / STATE_FILE).write_text("{not json")
    assert not w.expected_at_start()


def test_a_lost_session_is_counted_warned_and_alerted_once_and_resolved_when_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w, raised = watch(tmp_path)
    counts = Counts()
    w.check(counts)
    assert raised == []
    counts.sessions_lost = 1
    counts.sessions_taken_over = 1
    with caplog.at_level(logging.WARNING, logger="lifeline.mqtt_session"):
        w.check(counts)
        w.check(counts)  # nothing new: nothing more
    assert dict(w.counters.sessions_lost) == {"not_present": 1, "taken_over": 1}
    assert [(f.rule_id, f.device_id, f.state) for f in raised] == [
        (SESSION_RULE, "svc", FindingState.FIRING)]
    assert len(caplog.records) == 1 and "not_present: 1, taken_over: 1" in caplog.text
    counts.sessions_kept = 1
    w.check(counts)
    assert raised[-1].state is FindingState.RESOLVED and len(raised) == 2
    line = ingest_line(w.counters, WriterStats(), {}, 0, 1, "svc")
    assert "mqtt_session_lost_not_present=1i,mqtt_session_lost_taken_over=1i" in line


def test_the_subscriber_counts_a_takeover_and_a_missing_session(
        caplog: pytest.LogCaptureFixture) -> None:
    sub = MqttSubscriber(MqttOptions(client_id="svc", expect_session=True), ["t/#"],
                         RawBuffer())

    @dataclass
    class Flags:
        session_present: bool

    ok = ReasonCode(PacketTypes.CONNACK, identifier=0)
    with caplog.at_level(logging.WARNING, logger="ingest.subscriber"):
        sub._on_connect(sub.client, None, Flags(True), ok, None)  # the expected session
        sub._on_disconnect(sub.client, None, None,
                           ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E), None)
        sub._on_connect(sub.client, None, Flags(False), ok, None)  # wiped meanwhile
    assert (sub.sessions_kept, sub.sessions_taken_over, sub.sessions_lost) == (1, 1, 1)
    assert "MQTT session taken over" in caplog.text and "MQTT session lost" in caplog.text
    clean = MqttSubscriber(MqttOptions(client_id="c", clean_start=True, expect_session=True),
                           ["t/#"], RawBuffer())
    clean._on_connect(clean.client, None, Flags(False), ok, None)
    clean._on_connect(clean.client, None, Flags(False), ok, None)
    assert clean.sessions_lost == 0  # a clean start never expects a session
