"""The ``lifeline`` command line: one entry point, subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata

from lifeline.commands import (
    backtest,
    bench,
    config,
    dashboards,
    demo,
    devices,
    dlq,
    evaluate,
    report,
    serve,
    services,
    simulate,
    token,
)
from lifeline.commands.common import CommandError
from lifeline.logs import setup_logging
from lifeline.redaction import mask_urls

COMMANDS = (serve, simulate, demo, config, services, dlq, token, bench, devices, backtest,
            dashboards, report, evaluate)


def version() -> str:
    """The installed package's version."""
    try:
        return metadata.version("citylifeline")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
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
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
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
