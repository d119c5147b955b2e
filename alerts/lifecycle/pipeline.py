"""The alerts pipeline: findings → alert lifecycle → noise control → cases → outbox.

One database transaction per finding (and per tick): the alert change, the case change,
their audit lines and the webhook outbox rows commit together.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerts.cases.book import CaseBook
from alerts.cases.model import CaseConfig
from alerts.cases.store import get_case
from alerts.delivery.store import enqueue
from alerts.errors import StoreError
from alerts.lifecycle.lines import alert_line, superseded_line
from alerts.lifecycle.model import Alert, AlertConfig, AlertState
from alerts.lifecycle.stages import default_stages
from alerts.lifecycle.stages.stage import DeviceStateView, NoDeviceState, NoiseContext, Stage
from alerts.lifecycle.store import alert_from_row, alerts
from alerts.silences.store import active_silences
from devices.registry import DeviceLookup
from rules.model import Finding, FindingState

log = logging.getLogger(__name__)


def _changes(existing: tuple[int, ...], at_ns: int, window_ns: int) -> list[int]:
    return [t for t in (*existing, at_ns) if t > at_ns - window_ns]


class AlertPipeline:
    """Turns findings into alerts, notifications and cases; ticks the clocks."""

    def __init__(
        self,
        engine: Engine,
        registry: DeviceLookup,
        alert_config: AlertConfig,
        case_config: CaseConfig,
        *,
        devices: DeviceStateView | None = None,
        stages: Sequence[Stage] | None = None,
        write_lines: Callable[[list[str]], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.config = alert_config
        self.devices: DeviceStateView = devices or NoDeviceState()
        self.stages = list(stages) if stages is not None else default_stages()
        self._write_lines = write_lines
        self._pending_lines: list[str] = []
        self.cases = CaseBook(case_config, self._pending_lines.append)
        self.clock = clock
        self.raised = 0
        self.resolved = 0
        self.notified = 0
        self.late = 0

    # -- findings ------------------------------------------------------------------------
    def process(self, findings: Sequence[Finding]) -> list[Alert]:
        """Apply findings in order; returns the alerts whose state changed."""
        changed: list[Alert] = []
        for f in findings:
            try:
                with self.cases.lock, self.engine.begin() as conn:
                    if f.late:  # an episode already over: recorded, nobody notified
                        alert = self._apply_late(conn, f)
                        if alert is not None:
                            changed.append(alert)
                    elif (alert := self._apply(conn, f)) is not None:
                        changed.append(alert)
                        # case clocks run on the service clock: a backfilled old reading
                        # must not open a case that is overdue the moment it exists, nor a
                        # device clock running ahead one reported (and sent) in the future
                        self._notify(conn, [alert], self.clock())
            except sa.exc.SQLAlchemyError as exc:
                self._pending_lines.clear()
                raise StoreError(f"cannot store alert for device {f.device_id} rule "
                                 f"{f.rule_id}: {exc}") from exc
            self._flush_lines()
        return changed

    def _apply(self, conn: Connection, f: Finding) -> Alert | None:
        cfg = self.config
        fp = f"{f.device_id}/{f.rule_id}"
        row = conn.execute(sa.select(alerts).where(alerts.c.fingerprint == fp)).first()
        current = alert_from_row(row) if row is not None else None
        at = f.ts_ns
        # the transition's point time in lifeline_alert (kept as changed_ns): strictly after
        # the alert's previous one, so its last point is its state even when two transitions
        # share an instant or a reading older than a tick's promotion resolves the alert
        point = at if current is None else max(at, current.changed_ns + 1)
        v: dict[str, Any] = {"value": f.value, "metric": f.metric}
        if f.state is FindingState.FIRING:
            if current is None or (current.state is AlertState.RESOLVED
                                   and at - (current.resolved_ns or 0) > cfg.reopen_ns):
                dev = self.registry.get(f.device_id)
                # flap history outlives an occurrence: a slow flapper is still a flapper
                changes = _changes(current.changes if current else (), at, cfg.flap_window_ns)
                state = AlertState.PENDING if cfg.pending_ns > 0 else AlertState.FIRING
                v.update(
                    fingerprint=fp, device_id=f.device_id, rule_id=f.rule_id,
                    state=state.value, severity=f.severity.value,
                    device_type=dev.type if dev else "", grid=dev.grid if dev else "",
                    district=dev.district if dev else "", unit=dev.unit if dev else "",
                    first_seen_ns=at, changed_ns=point,
                    fired_ns=at if state is AlertState.FIRING else None, resolved_ns=None,
                    flapping=bool(current and current.flapping),
                    changes=",".join(map(str, changes)), suppressed="", notified_state="",
                    notified_severity="", acked_by="", acked_ns=None, ack_note="",
                    case_id=None)
                if current is None:
                    conn.execute(alerts.insert().values(**v))
                else:
                    conn.execute(alerts.update().where(alerts.c.id == current.id).values(**v))
                self.raised += 1
                log.info("alert %s device=%s rule=%s severity=%s value=%s",
                         state.value, f.device_id, f.rule_id, f.severity.value, f.value)
            elif current.state is AlertState.RESOLVED:  # re-fired within the reopen window
                changes = _changes(current.changes, at, cfg.flap_window_ns)
                v.update(state=AlertState.FIRING.value, changed_ns=point, fired_ns=at,
                         resolved_ns=None, severity=f.severity.value,
                         changes=",".join(map(str, changes)),
                         flapping=current.flapping or len(changes) > cfg.flap_threshold,
                         acked_by="", acked_ns=None, ack_note="")
                conn.execute(alerts.update().where(alerts.c.id == current.id).values(**v))
                self.raised += 1
                log.info("alert reopened device=%s rule=%s changes=%d flapping=%s",
                         f.device_id, f.rule_id, len(changes), v["flapping"])
            elif current.severity is not f.severity:
                v.update(severity=f.severity.value, changed_ns=point)
                conn.execute(alerts.update().where(alerts.c.id == current.id).values(**v))
                self._pending_lines.append(superseded_line(current, point))
                log.info("alert severity %s -> %s device=%s rule=%s", current.severity.value,
                         f.severity.value, f.device_id, f.rule_id)
            else:
                return None
        else:
            if current is None or current.state is AlertState.RESOLVED:
                return None
            changes = _changes(current.changes, at, cfg.flap_window_ns)
            v.update(state=AlertState.RESOLVED.value, changed_ns=point, resolved_ns=at,
                     changes=",".join(map(str, changes)),
                     flapping=current.flapping or len(changes) > cfg.flap_threshold)
            conn.execute(alerts.update().where(alerts.c.id == current.id).values(**v))
            self.resolved += 1
            log.info("alert resolved device=%s rule=%s value=%s", f.device_id, f.rule_id,
                     f.value)
        alert = alert_from_row(conn.execute(
            sa.select(alerts).where(alerts.c.fingerprint == fp)).one())
        self._pending_lines.append(alert_line(alert, point))
        return alert

    def _apply_late(self, conn: Connection, f: Finding) -> Alert | None:
        """A late reading met a rule while its series was not firing: record an alert that
        fired and resolved at the reading's own time, with no notification and no case.
        An active alert, or one that already records something newer, is left alone."""
        self.late += 1
        fp = f"{f.device_id}/{f.rule_id}"
        row = conn.execute(sa.select(alerts).where(alerts.c.fingerprint == fp)).first()
        current = alert_from_row(row) if row is not None else None
        at = f.ts_ns
        if current is not None and (current.state is not AlertState.RESOLVED
                                    or current.changed_ns >= at):
            log.info("late finding left alone device=%s rule=%s (alert %s)", f.device_id,
                     f.rule_id, current.state.value)
            return None
        v: dict[str, Any] = {
            "value": f.value, "metric": f.metric, "state": AlertState.RESOLVED.value,
            "severity": f.severity.value, "changed_ns": at, "fired_ns": at,
            "resolved_ns": at, "suppressed": "late",
            "notified_state": AlertState.RESOLVED.value,
            "notified_severity": f.severity.value}
        if current is None:
            dev = self.registry.get(f.device_id)
            v.update(fingerprint=fp, device_id=f.device_id, rule_id=f.rule_id,
                     device_type=dev.type if dev else "", grid=dev.grid if dev else "",
                     district=dev.district if dev else "", unit=dev.unit if dev else "",
                     first_seen_ns=at, flapping=False, changes="", acked_by="",
                     acked_ns=None, ack_note="", case_id=None)
            conn.execute(alerts.insert().values(**v))
        else:
            conn.execute(alerts.update().where(alerts.c.id == current.id).values(**v))
        log.info("late alert recorded device=%s rule=%s severity=%s value=%s at=%d",
                 f.device_id, f.rule_id, f.severity.value, f.value, at)
        alert = alert_from_row(conn.execute(
            sa.select(alerts).where(alerts.c.fingerprint == fp)).one())
        self._pending_lines.append(alert_line(alert, at))
        return alert

    # -- notifications ---------------------------------------------------------------------
    def _notify(self, conn: Connection, candidates: list[Alert], now_ns: int) -> None:
        ctx = NoiseContext(conn, now_ns, self.config, active_silences(conn, now_ns),
                           self.devices)
        passed = candidates
        for stage in self.stages:
            passed = stage.apply(ctx, passed)
        for alert_id, reason in ctx.held.items():
            conn.execute(alerts.update().where(alerts.c.id == alert_id)
                         .values(suppressed=reason[:64]))
        for alert_id in ctx.consumed:
            conn.execute(alerts.update().where(alerts.c.id == alert_id).values(
                notified_state=AlertState.RESOLVED.value, suppressed=""))
        for alert in passed:
            conn.execute(alerts.update().where(alerts.c.id == alert.id).values(
                notified_state=alert.state.value, notified_severity=alert.severity.value,
                suppressed=""))
            case = None
            if alert.state is AlertState.FIRING:
                device = self.registry.get(alert.device_id)
                case = self.cases.attach(conn, alert, now_ns, device.dma if device else "")
            elif alert.case_id is not None:
                case = get_case(conn, alert.case_id)
            fresh = alert_from_row(conn.execute(
                sa.select(alerts).where(alerts.c.id == alert.id)).one())
            enqueue(conn, f"alert.{alert.state.value}",
                    {"alert": fresh.doc(), "case": case.doc() if case else None}, now_ns,
                    case_id=case.id if case else None, fanout=self.cases.fanout)
            self.notified += 1
            log.info("notify alert.%s device=%s rule=%s case=%s", alert.state.value,
                     alert.device_id, alert.rule_id, case.id if case else None)

    # -- clocks ------------------------------------------------------------------------------
    def tick(self, now_ns: int | None = None) -> None:
        """Promote pending alerts, end flapping, retry held notifications, run case clocks."""
        now = self.clock() if now_ns is None else now_ns
        cfg = self.config
        try:
            with self.cases.lock, self.engine.begin() as conn:
                if cfg.pending_ns > 0:
                    rows = conn.execute(sa.select(alerts).where(
                        alerts.c.state == AlertState.PENDING.value,
                        alerts.c.changed_ns <= now - cfg.pending_ns)).all()
                    for row in rows:
                        conn.execute(alerts.update().where(alerts.c.id == row.id).values(
                            state=AlertState.FIRING.value, fired_ns=now, changed_ns=now))
                        a = alert_from_row(conn.execute(
                            sa.select(alerts).where(alerts.c.id == row.id)).one())
                        self._pending_lines.append(alert_line(a, now))
                calm = conn.execute(sa.select(alerts.c.id, alerts.c.changes).where(
                    alerts.c.flapping.is_(True))).all()
                for alert_id, changes in calm:
                    last = max((int(x) for x in changes.split(",") if x), default=0)
                    if now - last >= cfg.flap_window_ns:
                        conn.execute(alerts.update().where(alerts.c.id == alert_id)
                                     .values(flapping=False, changes=""))
                        log.info("alert %d no longer flapping", alert_id)
                rows = conn.execute(sa.select(alerts).where(
                    alerts.c.state != AlertState.PENDING.value,
                    sa.or_(alerts.c.state != alerts.c.notified_state,
                           sa.and_(alerts.c.state == AlertState.FIRING.value,
                                   alerts.c.severity != alerts.c.notified_severity)))).all()
                if rows:
                    self._notify(conn, [alert_from_row(r) for r in rows], now)
                self.cases.tick(conn, now)
        except sa.exc.SQLAlchemyError as exc:
            self._pending_lines.clear()
            raise StoreError(f"alerts tick failed: {exc}") from exc
        self._flush_lines()

    def _flush_lines(self) -> None:
        if self._pending_lines:
            lines = list(self._pending_lines)
            self._pending_lines.clear()
            if self._write_lines is not None:
                self._write_lines(lines)
