"""``lifeline evaluate SCENARIO``: score the rules and the case pipeline against ground truth."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from common.duration import parse_duration_ns
from lifeline.commands.common import CommandError, settings_from
from lifeline.commands.simulate import load_scenario_arg
from lifeline.evaluate import EvaluationSetup, evaluate_offline, shorten
from lifeline.settings import Settings
from simulators.errors import ScenarioError
from simulators.scenario import Scenario, builtin_scenarios_dir, ruleset_path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``evaluate`` command."""
    p = sub.add_parser("evaluate", help="run a scenario and score detection against ground truth")
    p.add_argument("scenario", help="a shipped scenario name, a TOML file, or 'all'")
    p.add_argument("--offline", action="store_true",
                   help="same decoder, rule engine and case pipeline in-process, without "
                        "MQTT, InfluxDB or serve (fast); default: through the real service")
    p.add_argument("--speed", type=float, default=600.0,
                   help="online: simulated seconds per wall second (default 600; "
                        "0: as fast as the broker takes it)")
    p.add_argument("--mode", choices=("gateway", "devices"), default="gateway",
                   help="online: one gateway connection (default) or one per device")
    p.add_argument("--duration", default=None,
                   help="evaluate only the first part of the scenario, e.g. 30m or 2h "
                        "(incidents starting later are left out); bounds the run time")
    p.add_argument("--work-dir", default=None,
                   help="online: keep the run's files here (serve.log, database, services)")
    p.add_argument("--rules", action="append", default=None, metavar="PATH|NAME",
                   help="evaluate these rules instead of the configured rules.paths: a rule "
                        "file, a folder, or a rule set shipped with the scenarios "
                        "(simulators/rulesets, e.g. pump-station-zscore); repeatable")
    p.add_argument("--json", action="store_true", help="one JSON object per scenario")
    p.set_defaults(func=evaluate_command)


def setup_from(settings: Settings) -> EvaluationSetup:
    """The rules and alert/case settings the service itself would use."""
    from lifeline.alerting import alert_configs  # noqa: PLC0415 - heavy import, only here

    alert_config, case_config = alert_configs(settings)
    return EvaluationSetup(rule_paths=list(settings.rules.paths), alert_config=alert_config,
                           case_config=case_config, timezone=settings.rules.timezone)


def evaluate_command(args: argparse.Namespace) -> int:
    """Evaluate one scenario or all shipped ones; exit 1 when a target is missed."""
    settings = settings_from(args)
    names = (sorted(p.stem for p in builtin_scenarios_dir().glob("*.toml"))
             if args.scenario == "all" else [args.scenario])
    if args.speed < 0:
        raise CommandError("--speed must be >= 0", code=2)
    try:
        duration_s = parse_duration_ns(args.duration) / 1e9 if args.duration else None
    except ValueError as exc:
        raise CommandError(f"--duration: {exc}", code=2) from exc
    setup = setup_from(settings)
    if args.rules:
        try:
            setup = replace(setup, rule_paths=[ruleset_path(r) for r in args.rules])
        except ScenarioError as exc:
            raise CommandError(str(exc), code=2) from exc
    all_met = True
    for name in names:
        scenario = load_scenario_arg(name)
        try:
            if duration_s is not None:
                scenario = shorten(scenario, duration_s)
            report = (evaluate_offline(scenario, setup) if args.offline
                      else _online(scenario, settings, setup, args))
        except ScenarioError as exc:
            raise CommandError(str(exc), code=2) from exc
        all_met &= bool(report["targets_met"])
        if args.json:
            print(orjson.dumps(report).decode(), flush=True)
        else:
            _print(report)
    return 0 if all_met else 1


def _online(scenario: Scenario, settings: Settings, setup: EvaluationSetup,
            args: argparse.Namespace) -> dict[str, Any]:
    from lifeline.evaluate_online import (  # noqa: PLC0415 - harness and HTTP, only here
        OnlineError,
        OnlineOptions,
        evaluate_online,
    )

    work = Path(args.work_dir) / scenario.name if args.work_dir else None
    try:
        return evaluate_online(scenario, settings, setup,
                               OnlineOptions(speed=args.speed, mode=args.mode, work_dir=work))
    except OnlineError as exc:
        raise CommandError(str(exc), code=3) from exc


def _print(report: dict[str, object]) -> None:
    print(f"== {report['scenario']}: {report['devices']} devices, {report['duration_h']} h, "
          f"{report.get('mode')}, targets {'met' if report['targets_met'] else 'MISSED'}")
    for inc in report["incidents"]:  # type: ignore[attr-defined]
        print(f"   {inc['kind']:<16} {inc['category']:<8} detected={inc['detected']!s:<5} "
              f"detect={inc['time_to_detect_s']}s case={inc['time_to_case_s']}s "
              f"cases={inc['cases']} {'ok' if inc['met'] else 'MISSED'}")
    print(f"   false cases {report['false_cases']} "
          f"({report['false_cases_per_1000_device_days']} per 1000 device-days), "
          f"false alarms {report['false_alarms']}, "
          f"sensor faults as process cases {report['sensor_faults_as_process_cases']}")
