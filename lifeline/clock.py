"""The service clock: wall time (production) or event time (simulation and replay).

With ``[clock] source = "event"`` the service's timers — time-driven rules (stale),
device offline tracking, alert and case clocks (resolve delays, group windows,
deadlines, case times) — follow the time of the readings instead of the wall clock,
so data published faster than real time (``lifeline evaluate``, a replay) sees the
same timers as in real time. Webhook retries, signatures, self-metrics and the
ingest ``max_past`` / ``max_future`` limits stay on the wall clock.

The event clock starts at ``clock.start`` and moves forward only, to the newest
reading of each batch — leaving out readings further ahead of the batch's 90th
percentile than ``ingest.max_future`` (and than the batch's own spread allows): a
minority of devices whose clock runs ahead does not drag it along (one alone in a
batch does). A batch may span a long time (a backlog, a replay at full speed): the
clock follows it to its end at once.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

import numpy as np
import numpy.typing as npt

from lifeline.errors import ConfigError


def parse_instant_ns(text: str) -> int:
    """RFC 3339 with an offset (``2026-03-05T00:00:00+08:00``) → ns since the epoch."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"clock.start: not an RFC 3339 time: {text!r}") from exc
    if at.tzinfo is None:
        raise ConfigError(f"clock.start: {text!r} needs a UTC offset (e.g. +08:00 or Z)")
    return int(at.timestamp() * 1e9)


class ServiceClock:
    """``now_ns()`` for every timer of the service; ``observe`` feeds reading times."""

    def __init__(self, source: str = "wall", start_ns: int | None = None,
                 max_ahead_ns: int = 300 * 10**9) -> None:
        if source not in ("wall", "event"):
            raise ConfigError(f"clock.source: 'wall' or 'event', not {source!r}")
        if source == "event" and start_ns is None:
            raise ConfigError("clock.source = 'event' needs clock.start (the first event time)")
        self.event = source == "event"
        self._now = start_ns or 0
        self._ahead = max_ahead_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        """The current time of the service, ns since the epoch."""
        if not self.event:
            return time.time_ns()
        return self._now

    def observe(self, ts_ns: npt.NDArray[np.int64]) -> None:
        """Reading times of one decoded batch (event clock only)."""
        if not self.event or ts_ns.size == 0:
            return
        k = (ts_ns.size * 9) // 10  # the 90th percentile (by rank)
        p90 = int(np.partition(ts_ns, k)[k]) if k < ts_ns.size else int(ts_ns.max())
        # the top tenth of a batch spread evenly over a long time reaches (p90 - min) / 9
        # beyond p90: still followed; a reading further out than that and max_future is not
        slack = max(self._ahead, (p90 - int(ts_ns.min())) // 8)
        target = int(ts_ns[ts_ns <= p90 + slack].max())
        with self._lock:
            self._now = max(self._now, target)
