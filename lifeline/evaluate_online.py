"""Evaluate a scenario through the real service: Mosquitto, InfluxDB, ``lifeline serve``.

Private Mosquitto and InfluxDB (devtools/harness.py) on free loopback ports; a
``lifeline serve`` subprocess with the scenario city's inventory, the rules and the
alert/case settings of the evaluation, and a webhook to a local signed receiver
(devtools/receiver.py); the fleet runner publishing the scenario in accelerated
time. The service runs on event time (``[clock] source = "event"``, started at the
scenario's start), so stale rules, offline tracking and the case clocks see the same
time as the readings however fast they come. Scoring uses only what the service
sent: ``alert.*`` webhooks with their alerts (fired at the reading's time) and
cases (created on the service clock), through the same :func:`simulators.score.score`
as the offline mode.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson

from devtools.harness import Harness, HarnessError, free_port
from devtools.receiver import ReceivedEvent, WebhookReceiver
from lifeline.auth import new_token, token_digest
from lifeline.errors import LifelineError
from lifeline.evaluate import EvaluationSetup, is_process_finding, process_rule_ids
from lifeline.progress import Progress
from lifeline.settings import Settings
from rules.loader import load_rules
from rules.model import Finding, FindingState, Rule, Severity
from simulators.city import write_city_inventory
from simulators.runner import RunnerOptions, RunnerStats, run_fleet
from simulators.scenario import Scenario
from simulators.score import CaseRecord, Detection, score
from simulators.stream import CityRun

log = logging.getLogger(__name__)
PREFIX = "lifeline"
_RECEIVED = re.compile(rb"^lifeline_ingest_received_total\s+([0-9.e+]+)", re.MULTILINE)


class OnlineError(LifelineError):
    """The service or its dependencies could not be run for an online evaluation."""


@dataclass(frozen=True, slots=True)
class OnlineOptions:
    """How to run the scenario through the service."""

    speed: float = 600.0  # simulated seconds per wall second; 0: as fast as the broker takes
    mode: Literal["gateway", "devices"] = "gateway"
    work_dir: Path | None = None  # keep the run's files (logs, database) here
    settle_s: float = 120.0  # longest wait for the service to take every published message


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def serve_env(run: CityRun, settings: Settings, setup: EvaluationSetup, work: Path, *,
              mqtt_port: int, influx_url: str, hook_url: str, hook_secret: str,
              api_port: int, token: str) -> dict[str, str]:
    """Environment of the ``lifeline serve`` subprocess: the evaluation's rules and
    alert/case settings, private services, event time from the scenario's start."""
    now = time.time()
    day = 86_400.0
    past_s = max(30 * day, now - run.start_s + day)
    future_s = max(300.0, run.end_s - now + day)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LIFELINE_")}  # nothing of the user's service leaks in
    rules = settings.rules.model_dump(mode="json")
    rules.update(paths=[str(Path(p).resolve()) for p in setup.rule_paths], state_file="",
                 timezone=setup.timezone)
    devices = settings.devices.model_dump(mode="json")
    devices.update(inventory=str(work / "inventory.csv"))
    if settings.devices.catalogue:  # serve runs in the work directory
        devices.update(catalogue=str(settings.devices.catalogue.resolve()))
    env.update({
        "LIFELINE_RUN_DIR": str(work / "run"),
        "LIFELINE_LOG_LEVEL": "INFO",
        "LIFELINE_MQTT__PORT": str(mqtt_port),
        "LIFELINE_MQTT__PREFIX": PREFIX,
        "LIFELINE_MQTT__CLIENT_ID": f"lifeline-evaluate-{secrets.token_hex(3)}",
        "LIFELINE_INFLUX__URL": influx_url,
        "LIFELINE_INFLUX__DATABASE": "lifeline",
        "LIFELINE_INGEST__MAX_PAST": f"{int(past_s)}s",
        "LIFELINE_INGEST__MAX_FUTURE": f"{int(future_s)}s",
        "LIFELINE_INGEST__SPOOL_FSYNC": "false",
        "LIFELINE_RULES": orjson.dumps(rules).decode(),
        "LIFELINE_DEVICES": orjson.dumps(devices).decode(),
        "LIFELINE_ALERTS": orjson.dumps(settings.alerts.model_dump(mode="json")).decode(),
        "LIFELINE_CASES": orjson.dumps(settings.cases.model_dump(mode="json")).decode(),
        "LIFELINE_WEBHOOK__URL": hook_url,
        "LIFELINE_WEBHOOK__SECRET": hook_secret,
        "LIFELINE_WEBHOOK__BASE_DELAY": "0.2",
        "LIFELINE_WEBHOOK__MAX_DELAY": "2",
        "LIFELINE_API__PORT": str(api_port),
        "LIFELINE_API__TOKENS": orjson.dumps([{"name": "evaluate", "role": "viewer",
                                               "sha256": token_digest(token)}]).decode(),
        "LIFELINE_CLOCK__SOURCE": "event",
        "LIFELINE_CLOCK__START": _iso(run.start_s),
    })
    return env


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _received(api: str, token: str) -> int:
    try:
        body = httpx.get(f"{api}/metrics", headers={"Authorization": f"Bearer {token}"},
                         timeout=5).content
    except httpx.HTTPError:
        return -1
    m = _RECEIVED.search(body)
    return int(float(m.group(1))) if m else -1


def evaluate_online(scenario: Scenario, settings: Settings, setup: EvaluationSetup,
                    options: OnlineOptions | None = None) -> dict[str, Any]:
    """Run ``scenario`` through Mosquitto, ``lifeline serve`` and InfluxDB; score the
    webhooks the service sent."""
    opts = options or OnlineOptions()
    started = time.monotonic()
    run = CityRun(scenario)
    with tempfile.TemporaryDirectory(prefix="lifeline-evaluate-") as tmp:
        work = (opts.work_dir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        write_city_inventory(run.layout, work / "inventory.csv")
        harness = Harness(work / "services")
        receiver = WebhookReceiver(secrets.token_hex(16)).start()
        serve: subprocess.Popen[bytes] | None = None
        try:
            try:
                infos = harness.up(["mosquitto", "influxdb"])
            except HarnessError as exc:
                raise OnlineError(str(exc)) from exc
            mqtt, influx = infos["mosquitto"], infos["influxdb"]
            api_port, token = free_port(), new_token()
            env = serve_env(run, settings, setup, work, mqtt_port=mqtt.port,
                            influx_url=influx.url, hook_url=receiver.url,
                            hook_secret=receiver.secret, api_port=api_port, token=token)
            serve_log = work / "serve.log"
            with serve_log.open("wb") as out:
                serve = subprocess.Popen([sys.executable, "-m", "lifeline", "serve"], env=env,
                                         cwd=work, stdout=out, stderr=subprocess.STDOUT)
            if not _wait(lambda: serve is not None and (serve.poll() is not None
                                                        or b"serving:" in serve_log.read_bytes()),
                         60) or serve.poll() is not None:
                raise OnlineError(f"lifeline serve did not start; see {serve_log}:\n"
                                  + serve_log.read_text("utf-8", "replace")[-2000:])
            publish_started = time.monotonic()
            progress = Progress(f"evaluate {scenario.name}", run.end_s - run.start_s,
                                unit="simulated s")
            try:
                stats = run_fleet(run, RunnerOptions(port=mqtt.port, prefix=PREFIX,
                                                     speed=opts.speed, mode=opts.mode),
                                  hooks=outage_hooks(run, harness),
                                  progress=lambda st, now: progress.update(
                                      now - run.start_s, f"{st.messages:,} messages"))
            finally:
                progress.close()
            publish_s = time.monotonic() - publish_started
            api = f"http://127.0.0.1:{api_port}"
            taken = _wait(lambda: _received(api, token) >= stats.messages, opts.settle_s)
            received = _received(api, token)
            if not taken:
                log.warning("the service took %d of %d published messages within %.0f s",
                            received, stats.messages, opts.settle_s)
            serve.send_signal(signal.SIGTERM)  # drains: findings, last ticks, due webhooks
            try:
                code = serve.wait(timeout=120)
            except subprocess.TimeoutExpired as exc:
                raise OnlineError(f"lifeline serve did not stop; see {serve_log}") from exc
            if code != 0:
                log.warning("lifeline serve exited with %d; see %s", code, serve_log)
        finally:
            if serve is not None and serve.poll() is None:
                serve.kill()
                serve.wait()
            receiver.stop()
            harness.down()
        events = receiver.events()
        rule_list = load_rules(setup.rule_paths)
        detections, cases = from_webhooks(events, run, rule_list)
        extra = _extra(opts, stats, events, receiver, publish_s, started)
        extra["received"] = received
        if run.outages:
            extra["outage"] = {**run.outage_stats, "publish_retried": stats.retried,
                               "reconnects": stats.reconnects}
        report = score(run.truth, detections, cases, device_count=len(run.layout.devices),
                       duration_s=run.end_s - run.start_s, scenario=scenario.name,
                       extra=extra, rule_kinds={r.id: r.kind for r in rule_list},
                       detectors=process_rule_ids(rule_list))
        # Nothing the broker acknowledged may be missing at the service (a publish re-sent
        # after a reconnect may arrive twice: more is not a loss).
        report["lost"] = max(0, stats.messages - received)
        report["targets_met"] = report["targets_met"] and report["lost"] == 0 and not (
            run.outages and stats.failed)  # the runner gave up re-sending after an outage
        return report


def outage_hooks(run: CityRun, harness: Harness) -> list[tuple[float, Callable[[], None]]]:
    """Stop the private broker at each ``broker_outage`` and start it again (same port,
    persistence: the service's session and its queued messages survive) at its end."""
    mosquitto = harness.services["mosquitto"]
    hooks: list[tuple[float, Callable[[], None]]] = []
    for start_s, end_s in run.outages:
        hooks += [(start_s, mosquitto.stop), (end_s, mosquitto.start)]
    return hooks


def _extra(opts: OnlineOptions, stats: RunnerStats, events: list[ReceivedEvent],
           receiver: WebhookReceiver, publish_s: float, started: float) -> dict[str, Any]:
    return {"mode": "online", "speed": opts.speed, "runner": opts.mode,
            "messages": stats.messages, "publish_failed": stats.failed,
            "webhooks": len(events), "bad_signatures": receiver.log.bad_signatures,
            "publish_s": round(publish_s, 2),
            "elapsed_s": round(time.monotonic() - started, 2)}


def from_webhooks(events: list[ReceivedEvent], run: CityRun, rule_list: list[Rule]
                  ) -> tuple[list[Detection], list[CaseRecord]]:
    """Detections (``alert.firing``) and cases with their alerts' devices, from webhooks."""
    rules = {r.id: r for r in rule_list}
    detections: list[Detection] = []
    case_at: dict[int, float] = {}
    case_grid: dict[int, str] = {}
    members: dict[int, list[tuple[str, bool]]] = {}
    for ev in events:
        if not ev.event.startswith("alert."):
            continue
        alert = ev.body.get("alert") or {}
        case = ev.body.get("case")
        device, rule_id = str(alert.get("device") or ""), str(alert.get("rule") or "")
        probe = Finding(rule_id, device, str(alert.get("metric") or ""), FindingState.FIRING,
                        Severity(alert.get("severity") or "info"), 0, 0.0)
        process = is_process_finding(probe, rules)
        sim = run.layout.by_id.get(device)
        fired = _epoch(alert.get("fired"))
        if ev.event == "alert.firing" and fired is not None:
            detections.append(Detection(device, rule_id, fired, sim.device.grid if sim else "",
                                        sim.dma if sim else "", process))
        if case:
            cid = int(case["id"])
            created = _epoch(case.get("created"))
            if created is not None:
                case_at[cid] = min(case_at.get(cid, created), created)
            case_grid.setdefault(cid, str(case.get("grid") or ""))
            if (device, process) not in members.setdefault(cid, []):
                members[cid].append((device, process))
    cases = []
    for cid, created_s in case_at.items():
        devs = members.get(cid, [])
        first = run.layout.by_id.get(devs[0][0]) if devs else None
        cases.append(CaseRecord(cid, created_s, tuple(d for d, _ in devs), case_grid[cid],
                                first.dma if first else "", any(p for _, p in devs)))
    return detections, cases
