"""One retry policy for every retry loop: capped exponential backoff with jitter
(:class:`Backoff`), and :func:`retry_until` for "try until it works or a deadline
passes" loops."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number ``attempt`` (1 after the first failure):
    ``min(max_s, base_s * factor ** (attempt - 1))`` times a jitter factor drawn
    uniformly from ``jitter`` (``(1.0, 1.0)``: none). Pass a seeded
    ``random.Random`` for reproducible delays (tests)."""

    base_s: float
    max_s: float
    factor: float = 2.0
    jitter: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        low, high = self.jitter
        if not (self.base_s > 0 and self.max_s > 0 and self.factor >= 1 and 0 <= low <= high):
            raise ValueError(f"invalid backoff {self!r}")

    def nominal(self, attempt: int) -> float:
        """The delay before retry ``attempt`` without jitter."""
        return min(self.max_s, self.base_s * self.factor ** min(attempt - 1, 64))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before retry ``attempt`` with jitter (``rng``: default the
        ``random`` module's)."""
        low, high = self.jitter
        if low == high:
            return self.nominal(attempt) * low
        r = rng.random() if rng is not None else random.random()
        return float(self.nominal(attempt) * (low + (high - low) * r))

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Delays before retries 1, 2, 3, … (endless)."""
        attempt = 0
        while True:
            attempt += 1
            yield self.delay(attempt, rng)

    def capped(self, max_s: float) -> Backoff:
        """The same policy with its delays at most ``max_s``."""
        return replace(self, max_s=min(self.max_s, max_s))


class RetriesExhaustedError(Exception):
    """:func:`retry_until` gave up: the deadline would pass before the next try.
    ``error`` is the last failure (also the ``__cause__``), ``attempts`` the count."""

    def __init__(self, attempts: int, error: Exception) -> None:
        super().__init__(f"gave up after {attempts} attempts: {error}")
        self.attempts = attempts
        self.error = error


def retry_until(
    operation: Callable[[], T],
    backoff: Backoff,
    *,
    retryable: Callable[[Exception], bool],
    deadline: float = math.inf,
    on_retry: Callable[[int, Exception, float], None] | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``operation`` until it returns; after a failure ``retryable`` accepts,
    wait the backoff's next delay (``on_retry(attempt, error, delay)`` first).

    An error ``retryable`` refuses propagates at once; :class:`RetriesExhaustedError` is
    raised when waiting would end after ``deadline`` (a ``clock`` time)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return operation()
        except Exception as exc:
            if not retryable(exc):
                raise
            delay = backoff.delay(attempt, rng)
            if clock() + delay > deadline:
                raise RetriesExhaustedError(attempt, exc) from exc
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
