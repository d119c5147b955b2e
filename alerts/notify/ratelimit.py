"""Sliding-window send limits of one channel (e.g. 20/min; 100/min and 5/s), and a block
after the platform said "too fast"."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

# the platforms' documented limits per robot
DEFAULT_LIMITS: dict[str, tuple[tuple[int, float], ...]] = {
    "dingtalk": ((20, 60.0),),
    "wecom": ((20, 60.0),),
    "feishu": ((100, 60.0), (5, 1.0)),
    "email": (),
    "sms": (),
}


class RateLimiter:
    """At most ``count`` sends per ``window`` seconds, for every window given."""

    def __init__(self, windows: Sequence[tuple[int, float]]) -> None:
        self.windows = tuple(windows)
        longest = max((w for _, w in self.windows), default=0.0)
        self._longest = longest
        self._sent: deque[float] = deque()
        self._blocked_until = 0.0
        self._lock = threading.Lock()

    def available(self, now: float) -> int:
        """Sends allowed at ``now`` (a large number without limits)."""
        with self._lock:
            if now < self._blocked_until:
                return 0
            while self._sent and self._sent[0] <= now - self._longest:
                self._sent.popleft()
            free = 1_000_000
            for count, window in self.windows:
                used = sum(1 for t in self._sent if t > now - window)
                free = min(free, count - used)
            return max(0, free)

    def wait_s(self, now: float) -> float:
        """Seconds until one send is allowed."""
        with self._lock:
            wait = max(0.0, self._blocked_until - now)
            for count, window in self.windows:
                inside = [t for t in self._sent if t > now - window]
                if len(inside) >= count:
                    wait = max(wait, inside[len(inside) - count] + window - now)
            return wait

    def take(self, now: float) -> None:
        """Record one send."""
        with self._lock:
            self._sent.append(now)

    def block(self, now: float, seconds: float) -> None:
        """Send nothing for ``seconds`` (the platform throttled us)."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, now + seconds)
