"""The routing table: which events go to which channel, by severity, device type,
grid/district and responsible unit; quiet hours (local time; a severity at or above
``quiet_override`` still goes at once) and escalation steps (``after``: a delayed row, sent
only if the alert is not acknowledged / the case not accepted by then).

Evaluated when an event is enqueued (:class:`Router` is an
:class:`alerts.delivery.store.Fanout`), so only events the noise stages let through (not
silenced, not inhibited) reach any channel, exactly like the webhook."""

from __future__ import annotations

import fnmatch
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from alerts.delivery.store import ExtraTarget

RANK = {"info": 0, "warning": 1, "minor": 2, "major": 3, "critical": 4, "none": 99}
# events that close something: never escalated
CLOSING_EVENTS = frozenset({"alert.resolved", "case.closed"})


@dataclass(frozen=True, slots=True)
class NotifyRoute:
    """One routing row (durations in ns; empty filters match anything)."""

    channels: tuple[str, ...]
    events: frozenset[str]
    min_severity: str = "info"
    device_types: tuple[str, ...] = ()
    grids: tuple[str, ...] = ()
    districts: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    quiet: tuple[time, time] | None = None
    quiet_override: str = "critical"
    after_ns: int = 0
    after: str = ""


def parse_quiet(text: str) -> tuple[time, time] | None:
    """``"22:00-07:00"`` → (start, end); "" → None."""
    if not text:
        return None
    a, b = (time.fromisoformat(p.strip()) for p in text.split("-"))
    return a, b


def _match(patterns: Sequence[str], value: str) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(value, p) for p in patterns)


def quiet_until(quiet: tuple[time, time], now_ns: int, tz: zoneinfo.ZoneInfo) -> int | None:
    """The end of the quiet period ``now_ns`` falls in (epoch ns), or None outside it."""
    local = datetime.fromtimestamp(now_ns / 1e9, tz)
    start, end = quiet
    t = local.time()
    inside = (start <= t < end) if start < end else (t >= start or t < end)
    if not inside:
        return None
    end_day = local.date() if t < end else local.date() + timedelta(days=1)
    ends = datetime.combine(end_day, end, tzinfo=tz)
    return int(ends.timestamp()) * 1_000_000_000


class Router:
    """Evaluates the routing table for one event."""

    def __init__(self, routes: Sequence[NotifyRoute], timezone: str = "Asia/Shanghai") -> None:
        self.routes = list(routes)
        self.tz = zoneinfo.ZoneInfo(timezone)

    def targets(self, event: str, payload: Mapping[str, Any],
                now_ns: int) -> list[ExtraTarget]:
        """One row per channel the event goes to (an immediate row wins over an
        escalation step of the same channel)."""
        alert: Mapping[str, Any] = payload.get("alert") or {}
        case: Mapping[str, Any] = payload.get("case") or {}
        severity = str(alert.get("severity") or case.get("severity") or "info")
        dtype = str(alert.get("device_type") or case.get("device_type") or "")
        grid = str(alert.get("grid") or case.get("grid") or "")
        district = str(alert.get("district") or case.get("district") or "")
        unit = str(case.get("unit") or alert.get("unit") or "")
        chosen: dict[str, ExtraTarget] = {}
        for i, r in enumerate(self.routes):
            if event not in r.events or RANK.get(severity, 0) < RANK[r.min_severity]:
                continue
            if not (_match(r.device_types, dtype) and _match(r.grids, grid)
                    and _match(r.districts, district) and _match(r.units, unit)):
                continue
            escalation = r.after_ns > 0
            if escalation and event in CLOSING_EVENTS:
                continue
            due = now_ns + r.after_ns
            held = False
            if r.quiet is not None and RANK.get(severity, 0) < RANK[r.quiet_override]:
                until = quiet_until(r.quiet, due, self.tz)
                if until is not None:
                    due, held = until, True
            notify = {"route": i, "escalation": escalation, "after": r.after,
                      "quiet_held": held}
            for channel in r.channels:
                old = chosen.get(channel)
                if old is not None and (not old.notify["escalation"] or escalation):
                    continue
                chosen[channel] = ExtraTarget(channel, due, notify,
                                              key_suffix=f"#esc{i}" if escalation else "")
        return list(chosen.values())
