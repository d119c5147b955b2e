"""Time zone names, checked once when settings load."""

from __future__ import annotations

import zoneinfo


def check_timezone(v: str) -> str:
    """``v`` if it names an IANA time zone, else a ValueError saying so."""
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {v!r} (use an IANA name, e.g. "
                         "'Asia/Shanghai')") from exc
    return v
