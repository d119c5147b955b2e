"""The ``lifeline`` command line: one entry point, subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence
from importlib import metadata

from lifeline.commands.common import CommandError
from lifeline.logs import setup_logging
from lifeline.redaction import mask_urls

# Every subcommand: name -> (module, one-line help). The module, and with it the
# command's heavy imports (benchmarks, devtools, the Grafana SDK, matplotlib, the
# report...), is imported only when that command runs or its own --help is asked:
# ``lifeline serve`` loads nothing but the service. The help line must be the one
# the module's ``register`` gives (tests/unit/test_cli_lazy.py checks it).
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("lifeline.commands.serve", "run the ingest, rule and alert service"),
    "simulate": ("lifeline.commands.simulate", "publish simulated device telemetry over MQTT"),
    "demo": ("lifeline.commands.demo", "run everything locally with live progress"),
    "config": ("lifeline.commands.config", "inspect the configuration"),
    "services": ("lifeline.commands.services", "start/stop private Mosquitto and InfluxDB"),
    "dlq": ("lifeline.commands.dlq", "inspect and replay dead-lettered messages"),
    "token": ("lifeline.commands.token", "API tokens"),
    "bench": ("lifeline.commands.bench", "run a benchmark; prints JSON"),
    "devices": ("lifeline.commands.devices", "device registry: import, export, list, MQTT ACL"),
    "backtest": ("lifeline.commands.backtest",
                 "evaluate rule files over CSV files (one device per file)"),
    "dashboards": ("lifeline.commands.dashboards",
                   "render, push and check the Grafana dashboards"),
    "report": ("lifeline.commands.report", "write the shift handover report (值班交接报告)"),
    "evaluate": ("lifeline.commands.evaluate",
                 "run a scenario and score detection against ground truth"),
    "notify": ("lifeline.commands.notify", "notification channels: send a test message"),
    "status": ("lifeline.commands.status",
               "cluster status: nodes, leader, lease, last takeover"),
}


def version() -> str:
    """The installed package's version."""
    try:
        return metadata.version("citylifeline")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; the commands in *load* (default: all) fully registered.

    Every other command is a placeholder with its name and help line only (and no
    arguments of its own), so ``lifeline --help`` lists every command without
    importing their modules.
    """
    parser = argparse.ArgumentParser(
        prog="lifeline", description="citylifeline: city lifeline telemetry and alerts"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--config",
                        help="settings file (default: $LIFELINE_CONFIG, ./lifeline.toml)")
    parser.add_argument("--log-level", default=None,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default: the log_level setting (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_line) in COMMANDS.items():
        if load is None or name in load:
            importlib.import_module(module_name).register(sub)
        else:
            sub.add_parser(name, help=help_line, add_help=False)
    return parser


def command_of(argv: Sequence[str] | None) -> str | None:
    """The subcommand named in *argv*, found without importing any command module.

    Exits like ``parse_args`` for the top-level ``--help``/``--version`` or a
    missing or unknown command.
    """
    args, _ = build_parser(load=()).parse_known_args(argv)
    command: str | None = args.command
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    command = command_of(argv)
    args = build_parser(load=() if command is None else (command,)).parse_args(argv)
    args.log_level_given = args.log_level is not None
    args.log_level = args.log_level or "INFO"
    setup_logging(args.log_level)
    try:
        code: int = args.func(args)
    except CommandError as exc:
        print(mask_urls(f"lifeline {args.command}: {exc}"), file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
