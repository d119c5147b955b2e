"""Helpers shared by subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lifeline.errors import ConfigError
from lifeline.logs import setup_logging
from lifeline.settings import Settings, config_path, load_settings, secret_values


class CommandError(Exception):
    """A subcommand failed with a message for the operator and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def settings_from(args: argparse.Namespace) -> Settings:
    """Build the settings from ``--config`` / ``$LIFELINE_CONFIG`` / env, and log as they
    say from here on (``log_format``, ``log_level`` unless ``--log-level`` was given,
    their secrets redacted): every command that reads settings logs like the service."""
    path = config_path(Path(args.config) if args.config else None)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        raise CommandError(str(exc), code=2) from exc
    level = args.log_level if getattr(args, "log_level_given", False) else settings.log_level
    setup_logging(level, settings.log_format, secret_values(settings))
    return settings


def err(message: str) -> None:
    """Print a message to stderr."""
    print(message, file=sys.stderr)
