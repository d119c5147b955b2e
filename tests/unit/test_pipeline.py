"""The reading pipeline as one object with ports, the service's periodic-task scheduler,
and the API's one typed context."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
import pytest

from devices.catalogue import Catalogue
from devices.model import Device
from devices.registry import MemoryRegistry
from devices.series import SeriesTable
from devices.topics import TopicScheme
from ingest.batch import RawMessage
from ingest.deadletter import DeadLetter
from ingest.decode import Decoder, DecodeResult
from lifeline.api.deps import ApiContext
from lifeline.app import create_app
from lifeline.db import open_database
from lifeline.pipeline import Pipeline
from lifeline.scheduler import PeriodicTask, Scheduler
from lifeline.settings import load_settings
from rules.device_events import event_findings
from rules.engine import RuleEngine
from rules.kinds import StaleRule, ThresholdRule
from rules.model import Finding, FindingState

S = 1_000_000_000
T0 = 1_760_000_000 * S
CATALOGUE = Catalogue.builtin()
REGISTRY = MemoryRegistry([Device("gas-1", "gas_alarm")])


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def submit(self, lines: list[str], on_durable: Callable[[], None] | None = None) -> None:
        self.lines += lines
        if on_durable is not None:
            on_durable()


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[Finding]] = []

    def process(self, findings: Sequence[Finding]) -> None:
        self.batches.append(list(findings))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def now_ns(self) -> int:
        return self.now

    def observe(self, ts_ns: npt.NDArray[np.int64]) -> None:
        if ts_ns.size:
            self.now = max(self.now, int(ts_ns.max()))


class Dead:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def store(self, letters: list[DeadLetter]) -> None:
        self.letters += letters


class Events:
    def process(self, result: DecodeResult, now_ns: int) -> list[Finding]:
        return [f for _, f in event_findings(result.events, REGISTRY, CATALOGUE)]


def pipeline(with_writer: bool = True,
             on_decoded: Callable[[DecodeResult], None] | None = None,
             ) -> tuple[Pipeline, Lines, Sink, Clock, Dead]:
    series = SeriesTable()
    decoder = Decoder(TopicScheme("lifeline"), REGISTRY, CATALOGUE, series)
    engine = RuleEngine([ThresholdRule(id="lel-high", metric="lel", above=50.0),
                         StaleRule.model_validate({"kind": "stale", "id": "quiet",
                                                   "after": "10m"})], series)
    lines, sink, clock, dead = Lines(), Sink(), Clock(), Dead()
    return (Pipeline(decoder, engine, series, devices=Events(), alerts=sink, clock=clock,
                     dead_letters=dead, writer=lines if with_writer else None,
                     on_decoded=on_decoded),
            lines, sink, clock, dead)


def telemetry(lel: float, at: int) -> RawMessage:
    body = orjson.dumps({"ts": at // 1_000_000, "values": {"lel": lel}})
    return RawMessage("lifeline/gas-1/telemetry", body, at)


def test_a_step_stores_runs_rules_then_device_events_and_keeps_dead_letters() -> None:
    counted: list[tuple[int, int]] = []  # (readings decoded, lines stored by then)
    pipe, lines, sink, clock, dead = pipeline(
        on_decoded=lambda r: counted.append((len(r.batch), len(lines.lines))))
    durable: list[bool] = []
    event = RawMessage("lifeline/gas-1/event", orjson.dumps({"type": "tamper"}), T0 + S)
    out = pipe.step([telemetry(80.0, T0), event, RawMessage("lifeline/gas-1/telemetry", b"{",
                                                             T0)],
                    lambda: durable.append(True))
    assert len(lines.lines) == 1 and "lel=80" in lines.lines[0]
    assert counted == [(1, 0)]  # counted once, right after decoding (before the store)
    assert durable == [True]
    assert [dl.topic for dl in dead.letters] == ["lifeline/gas-1/telemetry"]
    # rule findings first, then the device stage's, each batch to the alert port
    assert [[f.rule_id for f in b] for b in sink.batches] == [["lel-high"], ["event:tamper"]]
    assert (out.rule_findings, out.device_findings) == (1, 1)
    assert clock.now == T0  # the clock saw the reading time


def test_offline_no_writer_builds_no_lines_and_ticks_time_driven_rules() -> None:
    pipe, lines, sink, _, _ = pipeline(with_writer=False)
    durable: list[bool] = []
    pipe.step([telemetry(1.0, T0)], lambda: durable.append(True))
    assert lines.lines == [] and durable == [True]  # nothing to store: durable at once
    assert pipe.tick_rules(T0 + 11 * 60 * S) == 1
    (stale,) = sink.batches[-1]
    assert (stale.rule_id, stale.state) == ("quiet", FindingState.FIRING)


def test_scheduler_isolates_a_failing_task_and_runs_due_tasks_in_order(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    ran: list[str] = []
    flag = [False]

    def boom() -> None:
        ran.append("boom")
        raise RuntimeError("broken")

    tasks = Scheduler([PeriodicTask("every-pass", 0.0, lambda: ran.append("every")),
                       PeriodicTask("boom", 1.0, boom),
                       PeriodicTask("slow", 10.0, lambda: ran.append("slow"),
                                    due=lambda: flag[0])],
                      monotonic=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="lifeline.scheduler"):
        assert tasks.run_due() == 1
        now[0] = 1.0
        assert tasks.run_due() == 2  # boom raised; the loop went on
        flag[0] = True  # the extra trigger (an event-clock timer) makes "slow" due
        assert tasks.run_due() == 2
    assert ran == ["every", "every", "boom", "every", "slow"]
    assert tasks.failures["boom"] == 1
    assert "periodic task boom failed" in caplog.text
    with pytest.raises(ValueError, match="already scheduled"):
        tasks.add(PeriodicTask("boom", 1.0, boom))


def test_api_routes_reach_runtime_objects_only_through_the_context(tmp_path: Path) -> None:
    woken: list[bool] = []
    app = create_app(load_settings(None, run_dir=tmp_path),
                     open_database(f"sqlite:///{tmp_path / 'c.db'}"),
                     outbox_wake=lambda: woken.append(True))
    ctx = app.state.context
    assert isinstance(ctx, ApiContext)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.rule_engine = None  # type: ignore[misc]
    ctx.wake_outbox()
    assert woken == [True]
    api = Path(__file__).resolve().parents[2] / "lifeline" / "api"
    readers = [p.name for p in api.glob("*.py")
               if p.name != "deps.py" and "app.state" in p.read_text(encoding="utf-8")]
    assert readers == []
