"""Case deadlines: which stage's deadline a case has missed (超期)."""

from __future__ import annotations

from alerts.cases.model import Case, CaseState
from rules.model import Severity


def overdue_stage(case: Case, now_ns: int) -> str | None:
    """The stage whose deadline the case has missed at ``now_ns``, or None."""
    s = case.state
    if s is CaseState.REPORTED and case.register_due_ns and now_ns > case.register_due_ns:
        return "register"
    if (s in (CaseState.REGISTERED, CaseState.DISPATCHED, CaseState.RETURNED)
            and case.accepted_ns is None and case.dispatch_due_ns
            and now_ns > case.dispatch_due_ns):
        return "dispatch"
    if (s in (CaseState.REGISTERED, CaseState.DISPATCHED, CaseState.IN_PROGRESS,
              CaseState.RETURNED, CaseState.REWORK)
            and case.handle_due_ns and now_ns > case.handle_due_ns):
        return "handle"
    if s is CaseState.HANDLED and case.verify_due_ns and now_ns > case.verify_due_ns:
        return "verify"
    return None


def severity_at_least(severity: Severity, floor: Severity) -> bool:
    """True when ``severity`` ranks at or above ``floor``."""
    return severity.rank >= floor.rank
