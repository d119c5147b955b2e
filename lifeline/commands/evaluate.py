"""``lifeline evaluate SCENARIO``: score the rules and the case pipeline against ground truth."""

from __future__ import annotations

import argparse

import orjson

from lifeline.commands.common import CommandError, settings_from
from lifeline.commands.simulate import load_scenario_arg
from lifeline.evaluate import EvaluationSetup, evaluate_offline
from lifeline.settings import Settings
from simulators.errors import ScenarioError
from simulators.scenario import builtin_scenarios_dir


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``evaluate`` command."""
    p = sub.add_parser("evaluate", help="run a scenario and score detection against ground truth")
    p.add_argument("scenario", help="a shipped scenario name, a TOML file, or 'all'")
    p.add_argument("--offline", action="store_true", default=True,
                   help="same decoder, engine and case pipeline without MQTT (the default)")
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
    setup = setup_from(settings)
    all_met = True
    for name in names:
        scenario = load_scenario_arg(name)
        try:
            report = evaluate_offline(scenario, setup)
        except ScenarioError as exc:
            raise CommandError(str(exc), code=2) from exc
        all_met &= bool(report["targets_met"])
        if args.json:
            print(orjson.dumps(report).decode())
        else:
            _print(report)
    return 0 if all_met else 1


def _print(report: dict[str, object]) -> None:
    print(f"== {report['scenario']}: {report['devices']} devices, {report['duration_h']} h, "
          f"targets {'met' if report['targets_met'] else 'MISSED'}")
    for inc in report["incidents"]:  # type: ignore[attr-defined]
        print(f"   {inc['kind']:<16} {inc['category']:<8} detected={inc['detected']!s:<5} "
              f"detect={inc['time_to_detect_s']}s case={inc['time_to_case_s']}s "
              f"cases={inc['cases']} {'ok' if inc['met'] else 'MISSED'}")
    print(f"   false cases {report['false_cases']} "
          f"({report['false_cases_per_1000_device_days']} per 1000 device-days), "
          f"false alarms {report['false_alarms']}, "
          f"sensor faults as process cases {report['sensor_faults_as_process_cases']}")
