"""Rule engine upkeep in the service: reloads, time-driven ticks, state save and restore."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from alerts.lifecycle.store import open_alert_series
from common.duration import Duration
from devices.registry import DeviceLookup
from lifeline.clock import ServiceClock
from lifeline.errors import LifelineError
from lifeline.pipeline import Pipeline
from lifeline.scheduler import PeriodicTask
from lifeline.shared_state import RULE_STATE, SharedState, StateError
from rules.errors import RulesError
from rules.loader import load_rules

log = logging.getLogger(__name__)


class RuleUpkeep:
    """Reload on request, tick every ``tick_interval`` (wall time, or event time on the
    event clock), save the state every ``save_interval``; restore it at start-up."""

    def __init__(self, pipeline: Pipeline, paths: Sequence[Path], clock: ServiceClock,
                 state_file: Path | None, *, tick_interval: Duration, save_interval: Duration,
                 on_findings: Callable[[int], None] | None = None,
                 shared: SharedState | None = None) -> None:
        self.pipeline = pipeline
        self._on_findings = on_findings
        self.paths = list(paths)
        self.clock = clock
        self.state_file = state_file
        self.shared = shared  # active/standby: the state lives in the database, not a file
        self._tick_ns = tick_interval.ns
        self._save_s = save_interval.seconds
        self._tick_event_ns = clock.now_ns()
        self._reload = threading.Event()

    def tasks(self) -> list[PeriodicTask]:
        """The periodic tasks: pending reload (every pass), tick, save (to the file; with
        the state in the database the service saves it, in step with its acks)."""
        tasks = [PeriodicTask("rules-reload", 0.0, self.reload_if_requested),
                 PeriodicTask("rules-tick", self._tick_ns / 1e9, self.tick, self._tick_due)]
        if self.shared is None:
            tasks.append(PeriodicTask("rules-save", self._save_s, self.save_state))
        return tasks

    def request_reload(self) -> None:
        """Ask for a reload at the next pass (safe from a signal handler)."""
        self._reload.set()

    def reload_if_requested(self) -> None:
        """The pending reload, if any; a failure keeps the running rules."""
        if not self._reload.is_set():
            return
        self._reload.clear()
        try:
            self.reload()
        except RulesError as exc:
            log.error("rule reload failed, keeping the running rules: %s", exc)

    def reload(self) -> tuple[int, int]:
        """Load the rule files again; unchanged rules keep their state. Returns (kept, new).

        Raises RulesError (the running rules stay) when a file is invalid.
        """
        return self.pipeline.engine.reload(load_rules(self.paths))

    def _tick_due(self) -> bool:
        return self.clock.event and self.clock.now_ns() - self._tick_event_ns >= self._tick_ns

    def tick(self) -> int:
        """Time-driven rules at the clock's now; findings go to the alerts."""
        self._tick_event_ns = self.clock.now_ns()
        found = self.pipeline.tick_rules(self._tick_event_ns)
        if self._on_findings is not None:
            self._on_findings(found)
        return found

    def save_state(self) -> None:
        """Write the rule state to the database (active/standby) or the state file
        (errors are logged, not raised)."""
        if self.shared is not None:
            try:
                self.shared.save(RULE_STATE,
                                 self.pipeline.engine.snapshot_state().to_bytes(compress=True))
            except (LifelineError, RulesError) as exc:  # NotLeader included: not written
                log.error("cannot save rule state to the database: %s", exc)
            return
        if self.state_file is None:
            return
        try:
            self.pipeline.engine.save_state(self.state_file)
        except (OSError, RulesError) as exc:
            log.error("cannot save rule state to %s: %s", self.state_file, exc)

    def restore_state(self, registry: DeviceLookup, db: Engine) -> None:
        """The saved state (if any), then aligned with the open alerts."""
        engine = self.pipeline.engine
        if self.shared is not None:
            try:
                saved = self.shared.load(RULE_STATE)
                if saved is not None:
                    n = engine.load_state(saved.body, registry.get, self.clock.now_ns(),
                                          source="rule state in the database")
                    log.info("rule state restored from the database (saved by %s %.1f s "
                             "ago): %d series", saved.node_id,
                             (time.time_ns() - saved.saved_ns) / 1e9, n)
            except (StateError, RulesError) as exc:
                log.error("rule state not restored, starting from zero: %s", exc)
        elif self.state_file is not None and self.state_file.exists():
            try:
                engine.restore_state(self.state_file, registry.get, self.clock.now_ns())
            except RulesError as exc:
                log.error("rule state not restored, starting from zero: %s", exc)
        # The saved state may be older than the alerts (a crash since the last save):
        # the rules fire for exactly the open alerts, so each can still resolve.
        try:
            with db.connect() as conn:
                open_series = open_alert_series(conn)
        except SQLAlchemyError as exc:
            log.error("cannot read the open alerts to align the rule state: %s", exc)
            return
        changed = engine.sync_firing(open_series, registry.get)
        if changed:
            log.warning("rule state aligned with the open alerts: %d series changed", changed)
