"""The subscriber over TLS with username/password against a real Mosquitto.

The broker (harness) has only a TLS listener with a certificate from a CA made at
run time, a password file written by ``mosquitto_passwd`` and ``allow_anonymous
false``. A wrong password, an untrusted CA or a missing CA file make ``lifeline
serve`` exit with code 3 and one clear line: no traceback, no secret.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pydantic import SecretStr

from devices.model import Device
from devices.registry import write_inventory
from devtools.harness import ManagedService, TlsFiles, make_test_pki, start_mosquitto
from ingest.batch import RawBuffer
from ingest.mqttsocket import BufferedSocket
from ingest.subscriber import MqttOptions, MqttSubscriber
from lifeline.influxquery import count_values
from lifeline.service import Service
from lifeline.settings import (
    ApiSettings,
    DevicesSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
    Settings,
)
from tests.support import clean_env, wait_for

pytestmark = pytest.mark.integration

SERVICE_PASSWORD = "s3rvice-Pa55-" + uuid.uuid4().hex[:6]
DEVICE_PASSWORD = "dev1ce-Pa55-" + uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory,
                  pki: TlsFiles) -> Iterator[ManagedService]:
    """Mosquitto with a TLS listener only, a password file and no anonymous access."""
    broker = start_mosquitto(tmp_path_factory.mktemp("secure-broker"), tls=pki,
                             users={"lifeline-serve": SERVICE_PASSWORD, "gas": DEVICE_PASSWORD})
    try:
        yield broker
    finally:
        broker.stop()


def tls_client(port: int, ca: Path, username: str, password: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    client.username_pw_set(username, password)
    connected = threading.Event()

    def on_connect(c: mqtt.Client, u: object, f: object, reason: Any, p: object) -> None:
        if not reason.is_failure:
            connected.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert connected.wait(10), "publisher not accepted by the TLS broker"
    return client


def test_broker_refuses_plain_and_anonymous_clients(secure_broker: ManagedService,
                                                    pki: TlsFiles) -> None:
    """The harness broker really is locked down: the service test below proves something."""
    plain = mqtt.Client(CallbackAPIVersion.VERSION2)
    plain.connect_timeout = 2
    with pytest.raises(OSError):  # TLS listener: the plain CONNECT gets no CONNACK
        plain.connect("127.0.0.1", secure_broker.info.port)
        for _ in range(40):
            plain.loop(0.05)
        raise ConnectionError("no CONNACK")  # expected: the broker drops the plain client
    anonymous = mqtt.Client(CallbackAPIVersion.VERSION2)
    anonymous.tls_set_context(ssl.create_default_context(cafile=str(pki.ca_cert)))
    reasons: list[str] = []
    anonymous.on_connect = lambda c, u, f, reason, p: reasons.append(str(reason))
    anonymous.connect("127.0.0.1", secure_broker.info.port)
    anonymous.loop_start()
    assert wait_for(lambda: reasons, 10)
    anonymous.loop_stop()
    assert reasons[0] == "Not authorized"


def settings_for(tmp_path: Path, broker: ManagedService, influx_url: str, db: str,
                 prefix: str, ca: Path, password: str) -> Settings:
    inventory = tmp_path / "inventory.csv"
    write_inventory(inventory, [Device(f"gas-{i}", "gas_alarm", grid="G1") for i in range(5)])
    return Settings(
        run_dir=tmp_path / "run",
        mqtt=MqttSettings(port=broker.info.port, prefix=prefix, client_id=f"tls-{prefix}",
                          qos=1, tls=True, tls_ca_file=str(ca), username="lifeline-serve",
                          password=SecretStr(password), connect_timeout="10s"),
        influx=InfluxSettings(url=influx_url, database=db, flush_interval=0.05),
        ingest=IngestSettings(metrics_interval="1h", spool_fsync=False, flush_interval=0.05),
        devices=DevicesSettings(inventory=inventory),
        api=ApiSettings(enabled=False),
    )


def test_service_subscribes_over_tls_with_password_and_stores_readings(
    tmp_path: Path, secure_broker: ManagedService, influxdb: ManagedService, pki: TlsFiles,
) -> None:
    prefix = f"x{uuid.uuid4().hex[:10]}"
    db = f"tls{uuid.uuid4().hex[:8]}"
    settings = settings_for(tmp_path, secure_broker, influxdb.info.url, db, prefix,
                            pki.ca_cert, SERVICE_PASSWORD)
    service = Service(settings)
    stop = threading.Event()
    service.start()
    runner = threading.Thread(target=service.run, args=(stop,))
    runner.start()
    try:
        assert service.subscriber.subscribed.wait(10)
        pub = tls_client(secure_broker.info.port, pki.ca_cert, "gas", DEVICE_PASSWORD)
        base_ms = time.time_ns() // 1_000_000 - 60_000
        infos = [pub.publish(f"{prefix}/gas-{i % 5}/telemetry",
                             orjson.dumps({"ts": base_ms + i, "seq": i, "values": {"lel": i / 10}}),
                             qos=1) for i in range(200)]
        for info in infos:
            info.wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        assert wait_for(lambda: service.ingest.readings >= 200, 20), service.ingest
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive()
    assert service.subscriber.acked == 200
    assert count_values(influxdb.info.url, db, ["gas_alarm"]) == 200


def test_buffered_reads_over_tls_small_and_large_messages(
    secure_broker: ManagedService, pki: TlsFiles,
) -> None:
    """The buffered socket wraps the TLS socket: records split packets, pending() counts
    both buffers; every message arrives intact."""
    prefix = f"x{uuid.uuid4().hex[:10]}"
    buffer = RawBuffer()
    sub = MqttSubscriber(MqttOptions(port=secure_broker.info.port, client_id=f"tb-{prefix}",
                                     clean_start=True, qos=1, tls=True,
                                     tls_ca_file=str(pki.ca_cert), username="lifeline-serve",
                                     password=SERVICE_PASSWORD), [f"{prefix}/#"], buffer)
    sub.start()
    try:
        assert sub.subscribed.wait(10)
        sock = sub.client.socket()
        assert isinstance(sock, BufferedSocket) and isinstance(sock.wrapped, ssl.SSLSocket)
        pub = tls_client(secure_broker.info.port, pki.ca_cert, "gas", DEVICE_PASSWORD)
        sent = [bytes((i + k) % 256 for k in range(100_000)) if i % 1000 == 500 else b"%d" % i
                for i in range(5000)]
        infos = [pub.publish(f"{prefix}/d/telemetry", body, qos=1) for body in sent]
        for info in infos:
            info.wait_for_publish(30)
        pub.disconnect()
        pub.loop_stop()
        assert wait_for(lambda: len(buffer) >= len(sent), 30), len(buffer)
        got = buffer.drain(len(sent) + 10)
        sub.ack(got)
    finally:
        sub.stop()
    assert [m.payload for m in got] == sent


def serve(tmp_path: Path, broker: ManagedService, influx_url: str, ca: str,
          password: str) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    env.update({
        "LIFELINE_RUN_DIR": str(tmp_path / "run"),
        "LIFELINE_MQTT__PORT": str(broker.info.port),
        "LIFELINE_MQTT__TLS": "true",
        "LIFELINE_MQTT__TLS_CA_FILE": ca,
        "LIFELINE_MQTT__USERNAME": "lifeline-serve",
        "LIFELINE_MQTT__PASSWORD": password,
        "LIFELINE_MQTT__CONNECT_TIMEOUT": "10s",
        "LIFELINE_MQTT__CLIENT_ID": f"tls-bad-{uuid.uuid4().hex[:6]}",
        "LIFELINE_INFLUX__URL": influx_url,
        "LIFELINE_API__ENABLED": "false",
    })
    return subprocess.run([sys.executable, "-m", "lifeline", "serve"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=90)


def assert_clean_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "Traceback" not in output
    assert SERVICE_PASSWORD not in output and "wrong-" not in output
    line = next(x for x in result.stderr.splitlines() if x.startswith("lifeline serve:"))
    for needle in needles:
        assert needle in line, line


def test_wrong_password_fails_startup_with_exit_code_3(
    tmp_path: Path, secure_broker: ManagedService, influxdb: ManagedService, pki: TlsFiles,
) -> None:
    result = serve(tmp_path, secure_broker, influxdb.info.url, str(pki.ca_cert),
                   "wrong-" + SERVICE_PASSWORD)
    assert_clean_failure(result, "cannot start", "refused the connection",
                         "lifeline-serve", "mqtt.password")


def test_untrusted_ca_fails_startup_with_exit_code_3(
    tmp_path: Path, secure_broker: ManagedService, influxdb: ManagedService,
) -> None:
    other = make_test_pki(tmp_path / "other-ca")  # a CA that did not sign the broker
    result = serve(tmp_path, secure_broker, influxdb.info.url, str(other.ca_cert),
                   SERVICE_PASSWORD)
    assert_clean_failure(result, "cannot start", "TLS", "certificate verify failed",
                         "mqtt.tls_ca_file")


def test_missing_ca_file_fails_startup_with_exit_code_3(
    tmp_path: Path, secure_broker: ManagedService, influxdb: ManagedService,
) -> None:
    result = serve(tmp_path, secure_broker, influxdb.info.url, str(tmp_path / "nope.crt"),
                   SERVICE_PASSWORD)
    assert_clean_failure(result, "cannot start", "mqtt.tls_ca_file", "nope.crt")
