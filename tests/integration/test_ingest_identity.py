"""Identity of a reading against a real InfluxDB: every reading counted as stored is a
point of its own, whatever times, ``seq`` and redeliveries a stream has.

InfluxDB keeps one point per series and time: readings of one device that collide on
their time (an array without ``ts``, several messages in one millisecond, epoch seconds
several times a second, ms/s/ISO forms of one instant) must still land on distinct
points, and true duplicates must be dropped and counted instead.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.catalogue import Catalogue
from devices.model import Device
from devices.registry import MemoryRegistry
from devices.series import SeriesTable
from devices.topics import TopicScheme
from devtools.harness import ManagedService
from ingest.batch import RawMessage
from ingest.decode import Decoder
from ingest.influx import InfluxV1Transport
from ingest.lineproto import batch_lines
from lifeline.influxquery import influxql

pytestmark = pytest.mark.integration

DEVICES = ("gas-1", "gas-2")
NOW_NS = time.time_ns()
BASE_S = NOW_NS // 10**9 - 3600  # an hour ago: inside the accepted past
BASE_MS = BASE_S * 1000  # epoch ms of the same instant as epoch seconds BASE_S
ISO = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE_S))

# Colliding times: the same instant as ms, s, ISO and float; the next ms; the next second.
TIMES: list[object] = [BASE_MS, BASE_S, ISO, float(BASE_S), BASE_MS + 1, BASE_S + 1,
                       BASE_MS + 1000]
# seq 0 and 1000 share a tie-break; strings and a float (ignored) seq too
SEQS: list[object] = [0, 1, 2, 1000, "a", "b", 1.5]
# the database fixture hands out a fresh database per example
SUPPRESS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


def _ns(ts: object) -> int:
    """The sent time in ns, as the README defines it (the model of the test)."""
    if ts == ISO:
        return BASE_S * 10**9
    assert isinstance(ts, int | float)
    if ts < 100_000_000_000:
        return round(ts * 1_000_000) * 1000
    return round(ts * 1000) * 1000


@st.composite
def reading(draw: st.DrawFn, with_ts: bool = False, int_seq: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"values": {"lel": draw(st.sampled_from([0.0, 1.0, 2.5]))}}
    if draw(st.booleans()):
        doc["values"]["battery"] = draw(st.sampled_from([3.6, 3.0]))
    if with_ts or draw(st.integers(0, 3)):
        doc["ts"] = draw(st.sampled_from(TIMES))
    if int_seq:
        doc["seq"] = draw(st.integers(0, 4))
    elif draw(st.booleans()):
        doc["seq"] = draw(st.sampled_from(SEQS))
    return doc


@dataclass(frozen=True)
class Message:
    device: str
    body: bytes
    received_step: int  # receive time NOW_NS + step: equal steps share a receive time


@st.composite
def stream(draw: st.DrawFn, with_ts: bool = False, int_seq: bool = False) -> list[Message]:
    """Messages with colliding times and repeats (QoS 1 redelivery, device resends)."""
    out: list[Message] = []
    for _ in range(draw(st.integers(1, 20))):
        if out and draw(st.integers(0, 4)) == 0:  # an earlier message delivered again
            again = draw(st.sampled_from(out))
            out.append(Message(again.device, again.body, draw(st.integers(0, 40))))
            continue
        docs = draw(st.lists(reading(with_ts, int_seq), min_size=1, max_size=4))
        body: object = docs[0] if len(docs) == 1 and draw(st.booleans()) else docs
        out.append(Message(draw(st.sampled_from(DEVICES)), orjson.dumps(body),
                           draw(st.integers(0, 40))))
    return out


def identity(device: str, doc: dict[str, Any], unique: object) -> object:
    """The identity README "Ingest" defines (the reference model)."""
    seq, ts = doc.get("seq"), doc.get("ts")
    ts_ns = None if ts is None else _ns(ts)
    if type(seq) is int or type(seq) is str:
        return (device, "seq", seq, ts_ns)
    if ts_ns is None:
        return unique
    return (device, "values", ts_ns, tuple(doc["values"].items()))


def make_decoder() -> Decoder:
    registry = MemoryRegistry([Device(d, "gas_alarm", grid="G1") for d in DEVICES])
    return Decoder(TopicScheme("lifeline"), registry, Catalogue.builtin(), SeriesTable())


Fresh = Callable[[], tuple[InfluxV1Transport, str]]


@pytest.fixture
def database(influxdb: ManagedService) -> Iterator[tuple[str, Fresh]]:
    """``(url, fresh)``: each ``fresh()`` makes a database of its own (one per generated
    example: the fixture is not reset between them); all dropped at the end."""
    made: list[str] = []

    def fresh() -> tuple[InfluxV1Transport, str]:
        name = f"id_{uuid.uuid4().hex[:10]}"
        transport = InfluxV1Transport(influxdb.info.url, name)
        transport.create_database()
        made.append(name)
        return transport, name

    yield influxdb.info.url, fresh
    for name in made:
        httpx.post(f"{influxdb.info.url}/query", params={"q": f'DROP DATABASE "{name}"'},
                   timeout=10)


def points_stored(url: str, db: str) -> int:
    """Points in InfluxDB: every reading has ``lel``, so one count per point."""
    rows = influxql(url, db, "SELECT count(lel) FROM gas_alarm GROUP BY device")
    return sum(int(s["values"][0][1]) for s in rows)


def run(decoder: Decoder, transport: InfluxV1Transport, messages: list[Message],
        cuts: list[int]) -> tuple[int, int]:
    """Decode ``messages`` in the batches ``cuts`` makes and write them; (readings,
    duplicates) as the decoder counted them."""
    readings = duplicates = 0
    bounds = sorted({0, len(messages), *(c % (len(messages) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        raw = [RawMessage(f"lifeline/{m.device}/telemetry", m.body, NOW_NS + m.received_step)
               for m in messages[start:end]]
        res = decoder.decode(raw)
        assert res.dead == []
        readings += res.readings
        duplicates += res.duplicates
        lines = batch_lines(res.batch, decoder.series)
        if lines:
            transport.write(lines)
    return readings, duplicates


@settings(max_examples=40, deadline=None, suppress_health_check=SUPPRESS)
@given(messages=stream(), cuts=st.lists(st.integers(0, 40), max_size=4))
def test_every_reading_counted_as_stored_is_a_point(
        database: tuple[str, Fresh], messages: list[Message], cuts: list[int]) -> None:
    url, fresh = database
    transport, db = fresh()
    readings, duplicates = run(make_decoder(), transport, messages, cuts)
    docs = [(m.device, doc, (i, j))
            for i, m in enumerate(messages)
            for j, doc in enumerate(orjson.loads(m.body) if m.body.startswith(b"[")
                                    else [orjson.loads(m.body)])]
    assert readings + duplicates == len(docs)
    # what the decoder kept is exactly one reading per identity ...
    assert readings == len({identity(dev, doc, unique) for dev, doc, unique in docs})
    # ... and every one of them is a point of its own in InfluxDB
    assert points_stored(url, db) == readings


@settings(max_examples=20, deadline=None, suppress_health_check=SUPPRESS)
@given(messages=stream(with_ts=True, int_seq=True),
       cuts=st.lists(st.integers(0, 40), max_size=3), redelivered=st.integers(0, 20))
def test_a_redelivery_after_a_restart_lands_on_the_same_points(
        database: tuple[str, Fresh], messages: list[Message], cuts: list[int],
        redelivered: int) -> None:
    """The service stored the stream, then restarted (nothing remembered) before all
    acknowledgements went out: the broker delivers the tail again. The new process
    counts those readings again, but they land on their points: nothing is added and
    nothing overwritten."""
    url, fresh = database
    transport, db = fresh()
    readings, _ = run(make_decoder(), transport, messages, cuts)
    assert points_stored(url, db) == readings
    tail = messages[len(messages) - min(redelivered, len(messages)):]
    again, _ = run(make_decoder(), transport, tail, [])
    assert points_stored(url, db) == readings
    if tail:
        assert again > 0
