"""Periodic tasks of the service, run by one loop with error isolation.

The service's housekeeping (dead-letter replay, device silence checks, rule ticks and
saves, self metrics …) is a list of :class:`PeriodicTask`; the ingest loop calls
:meth:`Scheduler.run_due` between batches, so the tasks run in the thread that owns
the rule engine and the decoder. A task that raises is logged and runs again at its
next time; the others are not affected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeriodicTask:
    """``fn`` every ``interval`` seconds (0: every pass of the loop); also whenever
    ``due`` (optional) answers True — e.g. a timer on the event clock."""

    name: str
    interval: float
    fn: Callable[[], object]
    due: Callable[[], bool] | None = None


class Scheduler:
    """Runs the tasks that are due, in list order; first runs one interval after
    construction."""

    def __init__(self, tasks: Iterable[PeriodicTask],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self.tasks: list[PeriodicTask] = []
        self._next: dict[str, float] = {}
        self.failures: dict[str, int] = {}
        for task in tasks:
            self.add(task)

    def add(self, task: PeriodicTask) -> None:
        """Schedule ``task`` (names are unique)."""
        if task.name in self._next:
            raise ValueError(f"periodic task {task.name!r} already scheduled")
        self.tasks.append(task)
        self._next[task.name] = self._monotonic() + task.interval
        self.failures[task.name] = 0

    def run_due(self) -> int:
        """Run every task that is due; returns how many ran."""
        ran = 0
        for task in self.tasks:
            now = self._monotonic()
            try:
                if now < self._next[task.name] and not (task.due is not None and task.due()):
                    continue
                self._next[task.name] = now + task.interval
                ran += 1
                task.fn()
            except Exception:  # isolation: one failing task does not stop the others
                self.failures[task.name] += 1
                log.exception("periodic task %s failed", task.name)
        return ran
