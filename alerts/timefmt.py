"""Timestamps as the API and the webhook bodies show them."""

from __future__ import annotations


def iso(ns: int | None) -> str | None:
    """RFC 3339 UTC with milliseconds, or None."""
    if ns is None:
        return None
    from datetime import UTC, datetime  # noqa: PLC0415 - keep module import light

    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
