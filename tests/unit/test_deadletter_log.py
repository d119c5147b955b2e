"""Dead-letter logging under a flood: a few lines per reason, then one summary line."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import orjson
import pytest

from devices.catalogue import Catalogue
from devices.model import Device
from devices.registry import MemoryRegistry
from devices.series import SeriesTable
from devices.topics import TopicScheme
from ingest.batch import RawMessage
from ingest.deadletter import DeadLetterLogLimiter, DeadLetterStore
from ingest.decode import Decoder
from lifeline.db import open_database

LOGGER = "ingest.deadletter"


def _flood(n: int, now_ns: int) -> list[RawMessage]:
    """``n`` messages of two kinds of garbage: old readings and not-JSON."""
    old = now_ns - 90 * 86_400 * 10**9
    msgs = []
    for i in range(n):
        if i % 2:
            body = orjson.dumps({"ts": old // 10**6, "seq": i, "values": {"lel": 1.0}})
        else:
            body = b"{not json %d" % i
        msgs.append(RawMessage("lifeline/gas-1/telemetry", body, now_ns))
    return msgs


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_flood_logs_a_few_lines_per_reason_and_a_summary(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = MemoryRegistry([Device("gas-1", "gas_alarm", grid="G1", district="d", unit="u")])
    decoder = Decoder(TopicScheme("lifeline"), registry, Catalogue.builtin(), SeriesTable())
    store = DeadLetterStore(open_database(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    store.log_limiter = DeadLetterLogLimiter(per_reason=3, window_s=0.5)
    caplog.set_level(logging.INFO, logger=LOGGER)
    stored = 0
    for _ in range(40):  # 40 decoder batches, as the service hands them over
        result = decoder.decode(_flood(100, time.time_ns()))
        stored += store.add_many(result.dead)
    assert stored == 4000 and store.counts == {"ts_past": 2000, "not_json": 2000}
    lines = _lines(caplog)
    assert len([x for x in lines if "reason=ts_past" in x]) == 3
    assert len([x for x in lines if "reason=not_json" in x]) == 3
    assert not [x for x in lines if "suppressed" in x]  # the window is not over yet
    # the summary comes when the window ends, with no further letter needed
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(
            [x for x in _lines(caplog) if "suppressed" in x]) < 2:
        time.sleep(0.05)
    summaries = sorted(x for x in _lines(caplog) if "suppressed" in x)
    assert len(summaries) == 2, summaries
    assert summaries[0].startswith("suppressed 1997 dead letters of reason not_json in the last")
    assert summaries[1].startswith("suppressed 1997 dead letters of reason ts_past in the last")
    # a new window logs again
    caplog.clear()
    store.add_many(decoder.decode(_flood(10, time.time_ns())).dead)
    assert len(_lines(caplog)) == 6
    store.log_limiter.close()


def test_flush_reports_what_was_suppressed_once(caplog: pytest.LogCaptureFixture) -> None:
    limiter = DeadLetterLogLimiter(per_reason=1, window_s=60)
    caplog.set_level(logging.INFO, logger=LOGGER)
    for i in range(5):
        limiter.letter("t", "bad_shape", f"d{i}")
    limiter.flush()
    limiter.flush()
    lines = _lines(caplog)
    assert len(lines) == 2
    assert lines[1].startswith("suppressed 4 dead letters of reason bad_shape in the last")
    limiter.close()
