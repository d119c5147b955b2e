"""The CaseBook: grouping alerts into cases, routing, the workflow with SLA clocks, overdue
escalation (督办) and automatic verification (核查).

Every function works inside the caller's transaction, so a state change, its audit line
and its outbox rows commit together or not at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alerts.cases.deadlines import overdue_stage
from alerts.cases.lines import case_line
from alerts.cases.model import OPEN_CASE_STATES, Case, CaseConfig, CaseState
from alerts.cases.store import add_history, case_from_row, cases, get_case
from alerts.cases.workflow import Action, next_state
from alerts.delivery.store import Fanout, enqueue
from alerts.lifecycle.model import SERVICE_RULE_PREFIX, Alert, AlertState
from alerts.lifecycle.store import alerts

log = logging.getLogger(__name__)
SYSTEM = "system"

# Webhook event sent when an action leads to a state.
_EVENT_FOR_STATE = {
    CaseState.DISPATCHED: "case.dispatched",
    CaseState.CLOSED: "case.closed",
    CaseState.CANCELLED: "case.closed",
}


# Sensors of one water network zone see the same event (a burst drops pressure at every
# logger of the DMA and raises its inlet flow): they group by DMA across grids and types.
WATER_NETWORK_TYPES = frozenset({"water_pressure", "water_flow"})


def group_key(alert: Alert, dma: str = "") -> str:
    """Alerts of one grid and device type join one case (water network sensors: one DMA);
    without a grid, one device."""
    if dma and alert.device_type in WATER_NETWORK_TYPES:
        return f"dma:{dma}/water-network"
    if alert.grid:
        return f"grid:{alert.grid}/{alert.device_type}"
    return f"device:{alert.device_id}/{alert.device_type}"


class CaseBook:
    """Creates cases from alerts and moves them through the workflow."""

    def __init__(self, config: CaseConfig, lines: Callable[[str], None],
                 lock: threading.RLock | None = None, fanout: Fanout | None = None) -> None:
        self.config = config
        self._line = lines
        # the notification routing table: channel rows beside each webhook row
        self.fanout = fanout
        # serialises the pipeline, its clock and API actions within one process
        self.lock = lock or threading.RLock()

    # -- creation and grouping -------------------------------------------------------
    def attach(self, conn: Connection, alert: Alert, now_ns: int, dma: str = "") -> Case | None:
        """The case ``alert`` belongs to: its own open case, an open case of its group that
        had an alert within the group window or still has one firing, or a new one.
        None below the case severity."""
        if (alert.severity.rank < self.config.min_severity.rank
                or alert.rule_id.startswith(SERVICE_RULE_PREFIX)):
            return None
        if alert.case_id is not None:
            case = get_case(conn, alert.case_id)
            if case.state in OPEN_CASE_STATES:
                return self._joined(conn, case, alert, now_ns, rejoin=True)
        key = group_key(alert, dma)
        still_firing = sa.exists().where(alerts.c.case_id == cases.c.id,
                                         alerts.c.state == AlertState.FIRING.value)
        row = conn.execute(
            sa.select(cases).where(
                cases.c.group_key == key,
                cases.c.state.in_([s.value for s in OPEN_CASE_STATES]),
                sa.or_(cases.c.last_alert_ns >= now_ns - self.config.group_window_ns,
                       still_firing),
            ).order_by(cases.c.id.desc()).limit(1)).first()
        if row is not None:
            case = self._joined(conn, case_from_row(row), alert, now_ns, rejoin=False)
        else:
            case = self._create(conn, alert, key, now_ns)
        conn.execute(alerts.update().where(alerts.c.id == alert.id).values(case_id=case.id))
        return case

    def _create(self, conn: Connection, alert: Alert, key: str, now_ns: int) -> Case:
        due = self.config.deadlines_for(alert.severity, alert.device_type)
        title = f"{alert.device_type or 'device'} {alert.rule_id} at {alert.device_id}"
        if alert.grid:
            title += f" (grid {alert.grid})"
        case_id = conn.execute(cases.insert().values(
            state=CaseState.REPORTED.value, severity=alert.severity.value, title=title[:300],
            grid=alert.grid, district=alert.district, device_type=alert.device_type,
            device_id=alert.device_id, unit="", group_key=key, external_id="",
            created_ns=now_ns, updated_ns=now_ns, last_alert_ns=now_ns,
            register_due_ns=now_ns + due.register_ns if due.register_ns else None,
            overdue=False, escalated="", rework_count=0, return_count=0,
        ).returning(cases.c.id)).scalar_one()
        conn.execute(alerts.update().where(alerts.c.id == alert.id).values(case_id=case_id))
        point = add_history(conn, case_id, now_ns, SYSTEM, "report", "",
                            CaseState.REPORTED.value,
                            f"alert {alert.fingerprint} ({alert.severity.value})")
        case = get_case(conn, case_id)
        log.info("case %d reported from alert %s (severity=%s grid=%s)",
                 case_id, alert.fingerprint, alert.severity.value, alert.grid)
        self._notify(conn, case, "case.reported", "report", now_ns, point)
        if alert.severity.rank >= self.config.auto_register.rank:
            case = self.apply(conn, case_id, Action.REGISTER, SYSTEM, now_ns,
                              note="automatic: severity at or above the auto-register level")
        return case

    def _joined(self, conn: Connection, case: Case, alert: Alert, now_ns: int, *,
                rejoin: bool) -> Case:
        values: dict[str, Any] = {"last_alert_ns": max(now_ns, case.last_alert_ns),
                                  "updated_ns": now_ns}
        raised = alert.severity.rank > case.severity.rank
        if raised:
            values["severity"] = alert.severity.value
        conn.execute(cases.update().where(cases.c.id == case.id).values(**values))
        what = "re-fired" if rejoin else "joined"
        point = add_history(conn, case.id, now_ns, SYSTEM, "alert", case.state.value,
                            case.state.value,
                            f"alert {alert.fingerprint} {what} ({alert.severity.value})")
        case = get_case(conn, case.id)
        if raised and case.state is CaseState.REPORTED and (
                case.severity.rank >= self.config.auto_register.rank):
            case = self.apply(conn, case.id, Action.REGISTER, SYSTEM, now_ns,
                              note="automatic: severity raised to the auto-register level")
        elif raised:
            self._notify(conn, case, "case.updated", "severity", now_ns, point)
        return case

    # -- workflow ----------------------------------------------------------------------
    def apply(self, conn: Connection, case_id: int, action: Action, actor: str, now_ns: int, *,
              note: str = "", external_id: str | None = None,
              unit: str | None = None) -> Case:
        """Validate and apply one action (plus the automatic follow-ups it triggers)."""
        case = get_case(conn, case_id, for_update=True)
        target = next_state(case_id, case.state, action)
        v: dict[str, Any] = {"state": target.value, "updated_ns": now_ns}
        if external_id:
            v["external_id"] = external_id[:128]
        if unit:
            v["unit"] = unit[:128]
        due = self.config.deadlines_for(case.severity, case.device_type)
        if action is Action.REGISTER:
            v["registered_ns"] = now_ns
            v["unit"] = unit or self.config.route(case.grid, case.device_type,
                                                  self._device_unit(conn, case))
            v["dispatch_due_ns"] = now_ns + due.dispatch_ns if due.dispatch_ns else None
            v["handle_due_ns"] = now_ns + due.handle_ns if due.handle_ns else None
        elif action is Action.DISPATCH:
            if case.dispatched_ns is None:
                v["dispatched_ns"] = now_ns
        elif action in (Action.ACCEPT, Action.START):
            if case.accepted_ns is None:
                v["accepted_ns"] = now_ns
        elif action is Action.HANDLED:
            v["handled_ns"] = now_ns
            v["handled_on_time"] = case.handle_due_ns is None or now_ns <= case.handle_due_ns
            v["verify_due_ns"] = now_ns + due.verify_ns if due.verify_ns else None
        elif action is Action.RETURN:
            v["return_count"] = case.return_count + 1
        elif action is Action.REWORK:
            v["rework_count"] = case.rework_count + 1
            v["handled_on_time"] = None
            v["handle_due_ns"] = now_ns + due.handle_ns if due.handle_ns else None
        elif action is Action.VERIFY:
            v["verified_ns"] = now_ns
        elif action is Action.CLOSE:
            v["closed_ns"] = now_ns
        elif action is Action.CANCEL:
            v["cancelled_ns"] = now_ns
        conn.execute(cases.update().where(cases.c.id == case_id).values(**v))
        point = add_history(conn, case_id, now_ns, actor, action.value, case.state.value,
                            target.value, note)
        updated = get_case(conn, case_id)
        log.info("case %d %s: %s -> %s by %s", case_id, action.value, case.state.value,
                 target.value, actor)
        if action is not Action.COMMENT:
            self._notify(conn, updated, _EVENT_FOR_STATE.get(target, "case.updated"),
                         action.value, now_ns, point)
        # automatic follow-ups
        if target in (CaseState.REGISTERED, CaseState.REWORK) or (
                target is CaseState.RETURNED and self.config.redispatch_on_return):
            updated = self.apply(conn, case_id, Action.DISPATCH, SYSTEM, now_ns,
                                 note=f"automatic: to {updated.unit}")
        elif target is CaseState.VERIFIED and self.config.auto_close:
            updated = self.apply(conn, case_id, Action.CLOSE, SYSTEM, now_ns,
                                 note="automatic: verified")
        return updated

    def _device_unit(self, conn: Connection, case: Case) -> str:
        unit = conn.execute(sa.select(alerts.c.unit).where(
            alerts.c.case_id == case.id, alerts.c.unit != "").limit(1)).scalar()
        return str(unit or "")

    def _notify(self, conn: Connection, case: Case, event: str, action: str,
                now_ns: int, point_ns: int) -> None:
        """Queue the webhook event and write the ``lifeline_case`` point (at ``point_ns``,
        the history line's point time: see :func:`alerts.cases.store.add_history`)."""
        enqueue(conn, event, {"case": case.doc(), "alert": None, "action": action}, now_ns,
                case_id=case.id, fanout=self.fanout)
        self._line(case_line(case, action, point_ns))

    # -- clocks ----------------------------------------------------------------------------
    def tick(self, conn: Connection, now_ns: int) -> None:
        """Escalate missed deadlines (超期 → 督办) and verify handled cases automatically."""
        open_rows = conn.execute(sa.select(cases).where(
            cases.c.state.in_([s.value for s in OPEN_CASE_STATES]))).all()
        for row in open_rows:
            case = case_from_row(row)
            stage = overdue_stage(case, now_ns)
            if stage and stage not in case.escalated.split(","):
                self._escalate(conn, case, stage, now_ns)
            if case.state is CaseState.HANDLED and self.config.auto_verify:
                self._auto_verify(conn, case, now_ns)

    def _escalate(self, conn: Connection, case: Case, stage: str, now_ns: int) -> None:
        escalated = ",".join(s for s in [*case.escalated.split(","), stage] if s)
        conn.execute(cases.update().where(cases.c.id == case.id).values(
            overdue=True, escalated=escalated, updated_ns=now_ns))
        point = add_history(conn, case.id, now_ns, SYSTEM, "escalate", case.state.value,
                            case.state.value, f"超期: {stage} deadline missed")
        log.warning("case %d overdue at stage %s (state=%s unit=%s): escalating",
                    case.id, stage, case.state.value, case.unit)
        updated = get_case(conn, case.id)
        enqueue(conn, "case.escalated",
                {"case": updated.doc(), "alert": None, "action": "escalate", "stage": stage},
                now_ns, case_id=case.id, fanout=self.fanout)
        self._line(case_line(updated, "escalate", point))

    def _auto_verify(self, conn: Connection, case: Case, now_ns: int) -> None:
        handled = case.handled_ns or now_ns
        rows = conn.execute(sa.select(alerts.c.state, alerts.c.resolved_ns).where(
            alerts.c.case_id == case.id)).all()
        firing = any(s != AlertState.RESOLVED.value for s, _ in rows)
        after = self.config.verify_after_ns
        if firing:
            if now_ns - handled >= after:
                self.apply(conn, case.id, Action.REWORK, "auto-verify", now_ns,
                           note="readings not back to normal after handling")
            return
        normal_since = max([handled, *[r or 0 for _, r in rows]])
        if now_ns - normal_since >= after:
            self.apply(conn, case.id, Action.VERIFY, "auto-verify", now_ns,
                       note=f"readings normal for {after / 1e9:.0f}s after handling")
