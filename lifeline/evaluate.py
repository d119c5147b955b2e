"""Evaluate the shipped rules and the alert pipeline on a scenario, against its ground truth.

Offline: the scenario's messages go through the same decoder, rule engine and
alert/case pipeline as in ``lifeline serve`` — without MQTT or InfluxDB — in
simulated time, so a week of a city runs in seconds. Every firing finding and
every case is then scored by :func:`simulators.score.score`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from alerts.model import AlertConfig, CaseConfig
from alerts.pipeline import AlertPipeline
from alerts.schema import alerts as alerts_table
from alerts.schema import cases as cases_table
from devices.catalogue import Catalogue
from devices.registry import MemoryRegistry
from devices.series import SeriesTable
from devices.topics import TopicScheme
from ingest.batch import RawMessage
from ingest.decode import DecodeLimits, Decoder
from lifeline.db import open_database
from rules.device_events import event_findings
from rules.engine import RuleEngine
from rules.loader import load_rules
from rules.model import Finding, FindingState, Rule
from simulators.scenario import Scenario
from simulators.score import CaseRecord, Detection, score
from simulators.stream import CityRun

log = logging.getLogger(__name__)

HEALTH_METRICS = frozenset({"battery", "rssi", "link"})
HEALTH_KINDS = frozenset({"stale", "flatline"})
PROCESS_EVENTS = frozenset({"event:alarm"})


@dataclass(frozen=True, slots=True)
class EvaluationSetup:
    """What the evaluation runs: rules, alert and case settings, time zone."""

    rule_paths: Sequence[Path]
    alert_config: AlertConfig
    case_config: CaseConfig
    timezone: str = "Asia/Shanghai"


def is_process_finding(finding: Finding, rules: dict[str, Rule]) -> bool:
    """True for process alarms; False for sensor-health findings (stale, battery, link …)."""
    if finding.rule_id.startswith(("event:", "status:")):
        return finding.rule_id in PROCESS_EVENTS
    rule = rules.get(finding.rule_id)
    kind = str(getattr(rule, "kind", ""))
    return finding.metric not in HEALTH_METRICS and kind not in HEALTH_KINDS


def evaluate_offline(scenario: Scenario, setup: EvaluationSetup,
                     db_dir: Path | None = None) -> dict[str, Any]:
    """Run ``scenario`` through decoder → rule engine → alert pipeline; score it."""
    started = time.monotonic()
    run = CityRun(scenario)
    catalogue = Catalogue.builtin()
    registry = MemoryRegistry([d.device for d in run.layout.devices])
    series = SeriesTable()
    decoder = Decoder(TopicScheme("lifeline"), registry, catalogue, series,
                      DecodeLimits(max_past_ns=10 * 86_400 * 10**9))
    rule_list = load_rules(setup.rule_paths)
    rules = {r.id: r for r in rule_list}
    engine = RuleEngine(rule_list, series, timezone=setup.timezone)
    with tempfile.TemporaryDirectory(dir=db_dir) as tmp:
        db = open_database(f"sqlite:///{Path(tmp) / 'evaluate.db'}")
        now = {"ns": int(run.start_s * 1e9)}
        pipeline = AlertPipeline(db, registry, setup.alert_config, setup.case_config,
                                 clock=lambda: now["ns"])
        detections: list[Detection] = []
        messages = dead = findings_total = 0
        scheme = TopicScheme("lifeline")
        for chunk in run.chunks(60.0):
            raw = [RawMessage(scheme.topic(m.device_id, m.kind), m.payload, int(m.send_s * 1e9))
                   for m in chunk]
            messages += len(raw)
            result = decoder.decode(raw)
            dead += len(result.dead)
            findings = engine.evaluate(result.batch)
            findings += [f for _, f in event_findings(result.events, registry, catalogue)]
            if chunk:
                now["ns"] = max(now["ns"], int(chunk[-1].send_s * 1e9))
            findings += engine.tick(now["ns"])
            findings.sort(key=lambda f: f.ts_ns)
            findings_total += len(findings)
            for f in findings:
                if f.state is FindingState.FIRING:
                    sim = run.layout.by_id.get(f.device_id)
                    detections.append(Detection(
                        f.device_id, f.rule_id, f.ts_ns / 1e9,
                        sim.device.grid if sim else "", sim.dma if sim else "",
                        is_process_finding(f, rules)))
            pipeline.process(findings)
            pipeline.tick(now["ns"])
        case_records = _cases(db, run, rules)
        db.dispose()
    report = score(run.truth, detections, case_records, device_count=len(run.layout.devices),
                   duration_s=run.end_s - run.start_s, scenario=scenario.name,
                   extra={"mode": "offline", "messages": messages, "dead_lettered": dead,
                          "findings": findings_total,
                          "elapsed_s": round(time.monotonic() - started, 2)})
    return report


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
