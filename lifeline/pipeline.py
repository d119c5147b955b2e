"""The reading pipeline: decode → (store ∥ rules → device events → alerts).

One object joins the ingest decoder, the rule engine, the device stage and the alert
stage, with every outside dependency behind a port (a :class:`typing.Protocol`):

* :class:`LineWriter` — where line protocol goes (the InfluxDB writer in ``serve``;
  ``None`` offline: no lines are built);
* :class:`AlertSink` — where findings go (the alerts thread in ``serve``, the scoring
  collector of ``lifeline evaluate --offline``);
* :class:`PipelineClock` — the time the timers follow (the service clock; the
  scenario's simulated time offline);
* :class:`DeadLetterSink` — where undecodable messages go (the dead-letter table with
  retries; a counter offline);
* :class:`DeviceStage` — signs of life, status messages and device events turned into
  findings (the device monitor; a bare status tracker offline).

``lifeline serve`` (:mod:`lifeline.service`), ``lifeline evaluate --offline``
(:mod:`lifeline.evaluate`) and the benchmarks build one and call :meth:`Pipeline.step`
per batch of raw messages and :meth:`Pipeline.tick_rules` for time-driven rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from devices.series import SeriesTable
from ingest.batch import RawMessage
from ingest.deadletter import DeadLetter
from ingest.decode import Decoder, DecodeResult
from ingest.lineproto import batch_lines
from rules.engine import RuleEngine
from rules.model import Finding

Durable = Callable[[], None]


class LineWriter(Protocol):
    """Takes line protocol; ``on_durable`` runs once the lines are stored (or spooled)."""

    def submit(self, lines: list[str], on_durable: Durable | None = None) -> None:
        """Queue ``lines``."""


class AlertSink(Protocol):
    """Takes findings, in order, for the alert stage."""

    def process(self, findings: Sequence[Finding]) -> None:
        """Apply (or queue) ``findings``."""


class PipelineClock(Protocol):
    """The time of the pipeline's timers."""

    def now_ns(self) -> int:
        """Now, in nanoseconds."""

    def observe(self, ts_ns: npt.NDArray[np.int64]) -> None:
        """Reading times of one decoded batch (an event clock moves with them)."""


class DeadLetterSink(Protocol):
    """Keeps messages that could not be decoded."""

    def store(self, letters: list[DeadLetter]) -> None:
        """Keep ``letters`` (may block until they are kept)."""


class DeviceStage(Protocol):
    """Device events, status messages and signs of life → findings."""

    def process(self, result: DecodeResult, now_ns: int) -> list[Finding]:
        """The findings of one decoded batch."""


RuleTimer = Callable[[str, float], None]  # ("batch" | "tick", seconds)
Decoded = Callable[[DecodeResult], None]


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one :meth:`Pipeline.step` did."""

    decoded: DecodeResult
    rule_findings: int
    device_findings: int


class Pipeline:
    """decode → (store ∥ rules → device events → alerts), one batch at a time.

    Not thread-safe: one thread steps it (the rule engine and the decoder hold state).
    """

    def __init__(self, decoder: Decoder, engine: RuleEngine, series: SeriesTable, *,
                 devices: DeviceStage, alerts: AlertSink, clock: PipelineClock,
                 dead_letters: DeadLetterSink, writer: LineWriter | None = None,
                 rule_timer: RuleTimer | None = None, on_decoded: Decoded | None = None
                 ) -> None:
        self.decoder = decoder
        self.engine = engine
        self.series = series
        self.devices = devices
        self.alerts = alerts
        self.clock = clock
        self.dead_letters = dead_letters
        self.writer = writer
        self._timer = rule_timer
        self._on_decoded = on_decoded  # counters: called right after decoding

    def step(self, messages: list[RawMessage], on_durable: Durable | None = None) -> StepResult:
        """Decode ``messages``; store the readings and run them through the rules, the
        device stage and on to the alerts. ``on_durable`` runs once the readings are
        stored and the dead letters kept (in order with earlier steps)."""
        result = self.decoder.decode(messages)
        if self._on_decoded is not None:
            self._on_decoded(result)
        if result.dead:
            self.dead_letters.store(result.dead)
        if self.writer is not None:
            self.writer.submit(batch_lines(result.batch, self.series), on_durable)
        elif on_durable is not None:
            on_durable()
        self.clock.observe(result.batch.ts_ns)
        started = time.perf_counter()
        findings = self.engine.evaluate(result.batch)
        if self._timer is not None:
            self._timer("batch", time.perf_counter() - started)
        if findings:
            self.alerts.process(findings)
        device_findings = self.devices.process(result, self.clock.now_ns())
        if device_findings:
            self.alerts.process(device_findings)
        return StepResult(result, len(findings), len(device_findings))

    def tick_rules(self, now_ns: int | None = None) -> int:
        """Time-driven rules (stale …) at ``now_ns`` (default: the clock's now); their
        findings go to the alerts. Returns how many."""
        started = time.perf_counter()
        findings = self.engine.tick(self.clock.now_ns() if now_ns is None else now_ns)
        if self._timer is not None:
            self._timer("tick", time.perf_counter() - started)
        if findings:
            self.alerts.process(findings)
        return len(findings)
