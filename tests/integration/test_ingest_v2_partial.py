"""Partial writes on the v2 transport: 400/422 are bisected, bad lines dead-lettered.

VictoriaMetrics (the v2 server of the harness) never answers 400 for bad lines: it
skips them and answers 204 (see test_ingest_writer.py). These tests therefore run
the v2 transport against a real local HTTP server that answers ``/api/v2/write``
the way InfluxDB OSS 2.x documents it (docs.influxdata.com, "Troubleshoot issues
writing data"): a malformed line rejects the whole request with 400 and a JSON body
``{"code": "invalid", "message": "unable to parse '<line>': <why>"}`` naming the
first bad line; a field type conflict writes the other points and answers 422
("partial write: field type conflict ... dropped=N"). Every request goes over HTTP
through influxdb-client, gzip included.
"""

from __future__ import annotations

import gzip
import http.server
import re
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
from devtools.harness import ManagedService
from ingest.deadletter import DeadLetterStore
from ingest.influx import InfluxV2Transport, InfluxWriter
from lifeline.service import Service
from lifeline.settings import (
    ApiSettings,
    DevicesSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
    Settings,
)
from tests.support import wait_for

pytestmark = pytest.mark.integration
TOKEN = "v2-test-token"

_FIELD = re.compile(r'^(?P<key>[^=\s]+)=(?P<value>"(?:[^"\\]|\\.)*"|[^,\s"]+)$')
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class LineError(ValueError):
    """A line the server cannot parse."""


def _split_unquoted(text: str, sep: str) -> list[str]:
    out, cur, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise LineError("unbalanced quotes")
    out.append("".join(cur))
    return out


def _field_type(raw: str) -> tuple[str, object]:
    if raw.startswith('"'):
        return "string", raw[1:-1]
    if raw in ("t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"):
        return "boolean", raw[0] in "tT"
    if raw.endswith("i") and re.fullmatch(r"[+-]?\d+i", raw):
        return "integer", int(raw[:-1])
    if raw.endswith("u") and re.fullmatch(r"\d+u", raw):
        return "unsigned", int(raw[:-1])
    if _NUMBER.match(raw):
        return "float", float(raw)
    raise LineError(f"invalid field value {raw!r}")


def parse_line(line: str) -> tuple[str, str, dict[str, tuple[str, object]], int]:
    """(measurement, tag set, fields, timestamp) of one line of line protocol."""
    parts = [p for p in _split_unquoted(line, " ") if p != ""]
    if len(parts) < 2:
        raise LineError("missing fields")
    if len(parts) > 3:
        raise LineError("invalid field format")
    key, fields_text = parts[0], parts[1]
    measurement, _, tags = key.partition(",")
    if not measurement:
        raise LineError("missing measurement")
    for tag in filter(None, tags.split(",")):
        if "=" not in tag or tag.startswith("=") or tag.endswith("="):
            raise LineError("missing tag value")
    fields: dict[str, tuple[str, object]] = {}
    for item in _split_unquoted(fields_text, ","):
        m = _FIELD.match(item)
        if m is None:
            raise LineError("invalid field format")
        fields[m["key"]] = _field_type(m["value"])
    ts = time.time_ns()
    if len(parts) == 3:
        if not re.fullmatch(r"-?\d+", parts[2]):
            raise LineError("bad timestamp")
        ts = int(parts[2])
    return measurement, tags, fields, ts


class V2WriteServer:
    """A local HTTP server answering ``/api/v2/write`` and ``/ping`` like InfluxDB OSS 2.x."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, str, str, str, int], object] = {}
        self.types: dict[tuple[str, str, str], str] = {}  # (bucket, measurement, field)
        self.requests: list[int] = []  # status of every write request
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(204 if self.path == "/ping" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                status, answer = server.write(self.path, self.headers.get("Authorization"), body)
                self.send_response(status)
                data = orjson.dumps(answer) if answer is not None else b""
                if data:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def write(self, path: str, auth: str | None, body: bytes) -> tuple[int, Any]:
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(path)
        if url.path != "/api/v2/write":
            return 404, {"code": "not found", "message": "path not found"}
        if auth != f"Token {TOKEN}":
            return 401, {"code": "unauthorized", "message": "unauthorized access"}
        query = parse_qs(url.query)
        bucket = query.get("bucket", [""])[0]
        if not query.get("org") or not bucket:
            return 400, {"code": "invalid", "message": "bucket and org are required"}
        parsed = []
        for number, line in enumerate(body.decode("utf-8", "replace").split("\n"), 1):
            if not line.strip():
                continue
            try:
                parsed.append(parse_line(line))
            except LineError as exc:  # the whole request is rejected, nothing is written
                with self.lock:
                    self.requests.append(400)
                return 400, {"code": "invalid", "line": number,
                             "message": f"unable to parse '{line}': {exc}"}
        dropped: list[str] = []
        with self.lock:
            for measurement, tags, fields, ts in parsed:
                conflict = next((f"field type conflict: input field \"{name}\" on measurement "
                                 f"\"{measurement}\" is type {kind}, already exists as type "
                                 f"{self.types[(bucket, measurement, name)]}"
                                 for name, (kind, _) in fields.items()
                                 if self.types.get((bucket, measurement, name), kind) != kind),
                                None)
                if conflict:
                    dropped.append(conflict)
                    continue
                for name, (kind, value) in fields.items():
                    self.types[(bucket, measurement, name)] = kind
                    self.points[(bucket, measurement, tags, name, ts)] = value
            self.requests.append(422 if dropped else 204)
        if dropped:
            return 422, {"code": "unprocessable entity",
                         "message": f"failure writing points to database: partial write: "
                                    f"{dropped[0]} dropped={len(dropped)}"}
        return 204, None

    def count(self, bucket: str, measurement: str) -> int:
        """Points (series and timestamp) stored in ``bucket``, whatever their fields."""
        with self.lock:
            return len({(k[2], k[4]) for k in self.points
                        if k[0] == bucket and k[1] == measurement})

    def __enter__(self) -> V2WriteServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def v2server() -> Iterator[V2WriteServer]:
    with V2WriteServer() as server:
        yield server


def lines(n: int, measurement: str) -> list[str]:
    base = time.time_ns() - 3_600_000_000_000
    return [f"{measurement},device=d{i % 7} pressure={i / 10!r} {base + i * 1000}"
            for i in range(n)]


def test_the_stand_in_server_rejects_like_influxdb_2(v2server: V2WriteServer) -> None:
    """The server's own behaviour, checked over HTTP: 400 rejects all, 422 keeps the rest."""
    from ingest.errors import WriteError

    transport = InfluxV2Transport(v2server.url, org="city", bucket="b", token=TOKEN)
    with pytest.raises(WriteError) as info:
        transport.write(["wp v=1 1", "garbage without fields", "wp v=2 2"])
    assert info.value.bad_lines and "HTTP 400" in str(info.value)
    assert "unable to parse 'garbage without fields'" in str(info.value)
    assert v2server.count("b", "wp") == 0  # nothing of a 400 request is written
    transport.write(["wp v=1 1"])
    with pytest.raises(WriteError) as info:
        transport.write(['wp v="text" 5', "wp v=3 6"])
    assert info.value.bad_lines and "HTTP 422" in str(info.value)
    assert v2server.count("b", "wp") == 2  # the conflicting point alone is dropped
    wrong = InfluxV2Transport(v2server.url, org="city", bucket="b", token="nope")
    with pytest.raises(WriteError) as info:
        wrong.write(["wp v=1 1"])
    assert info.value.retryable and not info.value.bad_lines  # 401 is not the lines' fault
    transport.close()
    wrong.close()


def test_v2_400_is_bisected_good_lines_land_bad_ones_rejected(
    v2server: V2WriteServer,
) -> None:
    transport = InfluxV2Transport(v2server.url, org="city", bucket="b1", token=TOKEN,
                                  gzip_body=True)
    rejected: list[tuple[str, str]] = []
    writer = InfluxWriter(transport, batch_lines=1000,
                          on_rejected=lambda ls, err: rejected.extend((x, err) for x in ls))
    good = lines(1997, "wp")
    bad = ["wp,device=x pressure=oops 1", "this is not line protocol",
           'wp,device=d0 pressure="unterminated 2']
    chunk = good[:300] + bad[:1] + good[300:900] + bad[1:] + good[900:]
    done = threading.Event()
    writer.start()
    writer.submit(chunk, done.set)
    writer.stop()
    transport.close()
    assert done.is_set()
    assert sorted(x for x, _ in rejected) == sorted(bad)
    assert all("HTTP 400" in err and "unable to parse" in err for _, err in rejected)
    assert writer.stats.lines_rejected == 3
    assert writer.stats.lines_written == 1997
    assert v2server.count("b1", "wp") == 1997
    assert 400 in v2server.requests  # the server did answer 400: the writer bisected


def test_service_on_v2_dead_letters_refused_lines_as_write_rejected(
    tmp_path: Path, mosquitto: ManagedService, v2server: V2WriteServer,
) -> None:
    """Through the whole service (influx.version = 2): a field type conflict on the
    server (lel stored as a string earlier) is a 422; the other readings land and the
    refused lines become ``write_rejected`` dead letters."""
    prefix = f"x{uuid.uuid4().hex[:10]}"
    bucket = f"b{uuid.uuid4().hex[:6]}"
    inventory = tmp_path / "inventory.csv"
    write_inventory(inventory, [Device(f"gas-{i}", "gas_alarm", grid="G1") for i in range(4)]
                    + [Device("wp-0", "water_pressure", grid="G1")])
    settings = Settings(
        run_dir=tmp_path / "run",
        mqtt=MqttSettings(port=mosquitto.info.port, prefix=prefix, client_id=f"v2p-{prefix}",
                          qos=1),
        influx=InfluxSettings(url=v2server.url, version=2, org="city", bucket=bucket,
                              token=SecretStr(TOKEN), flush_interval=0.05, retries=1),
        ingest=IngestSettings(metrics_interval="1h", spool_fsync=False, flush_interval=0.05),
        devices=DevicesSettings(inventory=inventory),
        api=ApiSettings(enabled=False),
    )
    # gas_alarm.lel is a string in this bucket: every gas reading conflicts.
    seed = InfluxV2Transport(v2server.url, org="city", bucket=bucket, token=TOKEN)
    seed.write(['gas_alarm,device=old lel="broken" 1'])
    seed.close()
    service = Service(settings)
    stop = threading.Event()
    service.start()
    runner = threading.Thread(target=service.run, args=(stop,))
    runner.start()
    try:
        assert service.subscriber.subscribed.wait(10)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        pub.connect("127.0.0.1", mosquitto.info.port)
        pub.loop_start()
        base_ms = time.time_ns() // 1_000_000 - 60_000
        infos = [pub.publish(f"{prefix}/gas-{i % 4}/telemetry",
                             orjson.dumps({"ts": base_ms + i, "values": {"lel": i / 10}}), qos=1)
                 for i in range(8)]
        infos += [pub.publish(f"{prefix}/wp-0/telemetry",
                              orjson.dumps({"ts": base_ms + i, "values": {"pressure": 3 + i}}),
                              qos=1) for i in range(20)]
        for info in infos:
            info.wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        assert wait_for(lambda: service.ingest.dead_by_reason["write_rejected"] >= 8, 20), (
            service.ingest.dead_by_reason)
        assert wait_for(lambda: v2server.count(bucket, "water_pressure") >= 20, 10)
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive()
    letters = DeadLetterStore(service.db).list(reason="write_rejected")
    assert len(letters) == 8
    assert all(dl.letter.topic == "influx:write" and dl.letter.payload.startswith(b"gas_alarm,")
               and "field type conflict" in dl.letter.detail for dl in letters)
    assert v2server.count(bucket, "water_pressure") == 20
    assert v2server.count(bucket, "gas_alarm") == 1  # only the conflicting seed
    assert service.subscriber.acked == 28
