"""Helpers shared by subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lifeline.errors import ConfigError
from lifeline.settings import Settings, config_path, load_settings


class CommandError(Exception):
    """A subcommand failed with a message for the operator and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def settings_from(args: argparse.Namespace) -> Settings:
    """Build the settings from ``--config`` / ``$LIFELINE_CONFIG`` / env."""
    path = config_path(Path(args.config) if args.config else None)
    try:
        return load_settings(path)
    except ConfigError as exc:
        raise CommandError(str(exc), code=2) from exc


def err(message: str) -> None:
    """Print a message to stderr."""
    print(message, file=sys.stderr)
