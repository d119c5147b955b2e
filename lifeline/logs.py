"""Logging set-up for the CLI."""

from __future__ import annotations

import logging


def setup_logging(level: str) -> None:
    """Plain one-line logs to stderr."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
