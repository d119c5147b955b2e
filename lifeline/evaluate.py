"""Evaluate the shipped rules and the alert pipeline on a scenario, against its ground truth.

Offline: the scenario's messages go through the same :class:`~lifeline.pipeline.Pipeline`
(decoder, rule engine, device stage) and alert/case pipeline as in ``lifeline serve`` —
without MQTT or InfluxDB — in simulated time, so a week of a city runs in seconds. A
``broker_outage`` is told to the tracker as the service's own MQTT connection
dropping and coming back (as the subscriber does in ``serve``). Every firing finding and
every case is then scored by :func:`simulators.score.score`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa

from alerts.cases.model import CaseConfig
from alerts.cases.store import cases as cases_table
from alerts.lifecycle.model import AlertConfig
from alerts.lifecycle.pipeline import AlertPipeline
from alerts.lifecycle.store import alerts as alerts_table
from devices.catalogue import Catalogue
from devices.registry import MemoryRegistry
from devices.series import SeriesTable
from devices.status import StatusChange, StatusTracker
from devices.topics import TopicScheme
from ingest.batch import RawMessage
from ingest.deadletter import DeadLetter
from ingest.decode import DecodeLimits, Decoder, DecodeResult
from lifeline.db import open_database
from lifeline.pipeline import Pipeline
from rules.device_events import event_findings, status_findings
from rules.engine import RuleEngine
from rules.kinds import kind_of
from rules.loader import load_rules
from rules.model import Finding, FindingState, Rule
from simulators.errors import ScenarioError
from simulators.scenario import Scenario
from simulators.score import CaseRecord, Detection, score
from simulators.stream import CityRun

log = logging.getLogger(__name__)

HEALTH_METRICS = frozenset({"battery", "rssi", "link"})
CHECK_EVERY_NS = 60 * 10**9  # the device status tracker's silence check (one per step)
PROCESS_EVENTS = frozenset({"event:alarm"})


@dataclass(frozen=True, slots=True)
class EvaluationSetup:
    """What the evaluation runs: rules, alert and case settings, time zone."""

    rule_paths: Sequence[Path]
    alert_config: AlertConfig
    case_config: CaseConfig
    timezone: str = "Asia/Shanghai"


def shorten(scenario: Scenario, duration_s: float) -> Scenario:
    """The first ``duration_s`` of ``scenario``: incidents (and events of a simulated
    source) starting later are left out."""
    if duration_s <= 0:
        raise ScenarioError("--duration must be positive")
    if duration_s >= scenario.scenario.duration:
        return scenario
    head = scenario.scenario.model_copy(update={"duration": duration_s})
    kept = [i for i in scenario.incident if i.at < duration_s]
    update: dict[str, Any] = {"scenario": head, "incident": kept}
    if scenario.source is not None:  # a simulated source's events likewise
        update["source"] = scenario.source.model_copy(
            update={"event": [e for e in scenario.source.event if e.at < duration_s]})
    return scenario.model_copy(update=update)


def is_process_finding(finding: Finding, rules: dict[str, Rule]) -> bool:
    """True for process alarms; False for sensor-health findings (stale, battery, link …)."""
    if finding.rule_id.startswith(("event:", "status:")):
        return finding.rule_id in PROCESS_EVENTS
    rule = rules.get(finding.rule_id)
    health = rule is not None and kind_of(rule).health
    return finding.metric not in HEALTH_METRICS and not health


def process_rule_ids(rule_list: Sequence[Rule]) -> list[str]:
    """Ids of the process (not sensor-health) rules: the detectors scored per rule."""
    return [r.id for r in rule_list if not kind_of(r).health
            and r.metric not in HEALTH_METRICS]


def evaluate_offline(scenario: Scenario, setup: EvaluationSetup,
                     db_dir: Path | None = None) -> dict[str, Any]:
    """Run ``scenario`` through decoder → rule engine → alert pipeline; score it."""
    started = time.monotonic()
    run = CityRun(scenario)
    catalogue = Catalogue.builtin()
    # each device with its reporting interval, as the inventory the online mode imports
    registry = MemoryRegistry([replace(d.device, interval_s=float(d.interval_s))
                               for d in run.layout.devices])
    series = SeriesTable()
    decoder = Decoder(TopicScheme("lifeline"), registry, catalogue, series,
                      DecodeLimits(max_past_ns=10 * 86_400 * 10**9))
    rule_list = load_rules(setup.rule_paths)
    rules = {r.id: r for r in rule_list}
    engine = RuleEngine(rule_list, series, timezone=setup.timezone)
    with tempfile.TemporaryDirectory(dir=db_dir) as tmp:
        db = open_database(f"sqlite:///{Path(tmp) / 'evaluate.db'}")
        clock = _SimClock(int(run.start_s * 1e9))
        alerts = AlertPipeline(db, registry, setup.alert_config, setup.case_config,
                               clock=clock.now_ns)
        found, dead_letters = _Collected(), _Counted()
        # no writer: nothing is stored, no line protocol is built
        pipeline = Pipeline(decoder, engine, series, alerts=found, clock=clock,
                            devices=_Link(run, registry, catalogue, series, clock.now_ns()),
                            dead_letters=dead_letters)
        detections: list[Detection] = []
        messages = findings_total = 0
        scheme = TopicScheme("lifeline")
        for chunk in run.chunks(60.0):
            raw = [RawMessage(scheme.topic(m.device_id, m.kind), m.payload, int(m.send_s * 1e9))
                   for m in chunk]
            messages += len(raw)
            if chunk:
                clock.advance(int(chunk[-1].send_s * 1e9))
            pipeline.step(raw)  # readings → rules, device events/status → findings
            pipeline.tick_rules()
            findings = found.take()
            findings.sort(key=lambda f: f.ts_ns)
            findings_total += len(findings)
            for f in findings:
                if f.state is FindingState.FIRING:
                    sim = run.layout.by_id.get(f.device_id)
                    detections.append(Detection(
                        f.device_id, f.rule_id, f.ts_ns / 1e9,
                        sim.device.grid if sim else "", sim.dma if sim else "",
                        is_process_finding(f, rules)))
            alerts.process(findings)
            alerts.tick(clock.now_ns())
        case_records = _cases(db, run, rules)
        db.dispose()
    report = score(run.truth, detections, case_records, device_count=len(run.layout.devices),
                   duration_s=run.end_s - run.start_s, scenario=scenario.name,
                   extra={"mode": "offline", "messages": messages,
                          "dead_lettered": dead_letters.count,
                          "findings": findings_total,
                          "elapsed_s": round(time.monotonic() - started, 2)},
                   rule_kinds={r.id: r.kind for r in rule_list},
                   detectors=process_rule_ids(rule_list))
    if run.outages:
        report["outage"] = dict(run.outage_stats)
    return report


class _SimClock:
    """Simulated time: the send time of the newest message stepped (moves forward only)."""

    def __init__(self, start_ns: int) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        """Now in simulated time."""
        return self._now

    def observe(self, ts_ns: npt.NDArray[np.int64]) -> None:
        """Reading times do not move this clock (the send times do, :meth:`advance`)."""

    def advance(self, ns: int) -> None:
        """Move to ``ns`` (never back)."""
        self._now = max(self._now, ns)


class _Collected:
    """The alert port offline: findings of one step, sorted and scored before the alert
    pipeline applies them."""

    def __init__(self) -> None:
        self._findings: list[Finding] = []

    def process(self, findings: Sequence[Finding]) -> None:
        """Keep ``findings`` for :meth:`take`."""
        self._findings.extend(findings)

    def take(self) -> list[Finding]:
        """The findings kept since the last call."""
        out, self._findings = self._findings, []
        return out


class _Counted:
    """The dead-letter port offline: counted, not kept."""

    def __init__(self) -> None:
        self.count = 0

    def store(self, letters: list[DeadLetter]) -> None:
        """Count ``letters``."""
        self.count += len(letters)


class _Link:
    """The device stage as ``serve`` runs it: device events, signs of life, wills,
    silence checks, and the service's own MQTT connection (down during a
    ``broker_outage``)."""

    def __init__(self, run: CityRun, registry: MemoryRegistry, catalogue: Catalogue,
                 series: SeriesTable, now_ns: int) -> None:
        self.registry = registry
        self.series = series
        self.catalogue = catalogue
        self.tracker = StatusTracker(catalogue, registry.__iter__, registry.get,
                                     now_ns=now_ns)
        self.connects = 1
        self.tracker.ingest_state(True, self.connects, now_ns)
        # (time, connected) edges of the service's broker connection
        self.edges = sorted([(int(a * 1e9), False) for a, _ in run.outages]
                            + [(int(b * 1e9), True) for _, b in run.outages])
        self.last_check = now_ns

    def process(self, result: DecodeResult, now_ns: int) -> list[Finding]:
        """Apply one decoded step; the findings (device events, ``status:offline``) for
        the alert stage."""
        findings = [f for _, f in event_findings(result.events, self.registry, self.catalogue)]
        changes: list[StatusChange] = []
        while self.edges and self.edges[0][0] <= now_ns:
            at, connected = self.edges.pop(0)
            self.connects += int(connected)
            self.tracker.ingest_state(connected, self.connects, at)
        ids = {e.device_id for e in result.events}
        if len(result.batch):
            devices = self.series.devices
            ids.update(devices[s].id for s in np.unique(result.batch.series).tolist())
        if ids:
            changes += self.tracker.seen(sorted(ids), now_ns)
        if result.statuses:
            changes += self.tracker.status(result.statuses)
        if now_ns - self.last_check >= CHECK_EVERY_NS:
            self.last_check = now_ns
            changes += self.tracker.check(now_ns)
        return findings + status_findings(changes, self.registry, self.catalogue)


def _cases(db: sa.engine.Engine, run: CityRun, rules: dict[str, Rule]) -> list[CaseRecord]:
    with db.connect() as conn:
        case_rows = conn.execute(sa.select(cases_table.c.id, cases_table.c.created_ns,
                                           cases_table.c.grid)).all()
        alert_rows = conn.execute(sa.select(alerts_table.c.case_id, alerts_table.c.device_id,
                                            alerts_table.c.rule_id,
                                            alerts_table.c.metric)).all()
    members: dict[int, list[tuple[str, bool]]] = {}
    for case_id, device_id, rule_id, metric in alert_rows:
        if case_id is None:
            continue
        probe = Finding(rule_id, device_id, metric, FindingState.FIRING,
                        rules[rule_id].severity if rule_id in rules else _info(), 0, 0.0)
        members.setdefault(case_id, []).append((device_id, is_process_finding(probe, rules)))
    out = []
    for case_id, created_ns, grid in case_rows:
        devs = members.get(case_id, [])
        device_ids = tuple(d for d, _ in devs)
        sim = run.layout.by_id.get(device_ids[0]) if device_ids else None
        out.append(CaseRecord(case_id, created_ns / 1e9, device_ids, grid,
                              sim.dma if sim else "", any(p for _, p in devs)))
    return out


def _info() -> Any:
    from rules.model import Severity  # noqa: PLC0415

    return Severity.INFO
