"""``lifeline config check``: print the effective settings, secrets masked."""

from __future__ import annotations

import argparse
import sys

import orjson

from lifeline.commands.common import settings_from
from lifeline.settings import masked, risky_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``config`` command."""
    cfg = sub.add_parser("config", help="inspect the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate and print the effective settings")
    check.set_defaults(func=check_command)


def check_command(args: argparse.Namespace) -> int:
    """Validate; print the settings as JSON with secrets masked, risky choices on stderr."""
    settings = settings_from(args)
    for warning in risky_settings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    print(orjson.dumps(masked(settings), option=orjson.OPT_INDENT_2).decode())
    return 0
