"""The case state machine: which action moves a case from which state to which.

Illegal transitions raise :class:`~alerts.errors.IllegalTransitionError` naming the
actions that are allowed in the current state.
"""

from __future__ import annotations

from enum import StrEnum

from alerts.cases.model import CaseState
from alerts.errors import IllegalTransitionError

S = CaseState


class Action(StrEnum):
    """Everything that can be done to a case."""

    REGISTER = "register"  # 立案 (duty officer, or automatic by severity)
    DISPATCH = "dispatch"  # 派遣 to the routed unit (automatic after register / return / rework)
    ACCEPT = "accept"      # the unit accepted the case
    START = "start"        # the unit started work (same transition as accept)
    HANDLED = "handled"    # 处置完成
    RETURN = "return"      # 退回: not ours / cannot handle → re-dispatch
    VERIFY = "verify"      # 核查 passed
    REWORK = "rework"      # 返工: verification failed
    CLOSE = "close"        # 结案
    CANCEL = "cancel"      # 不予立案 / false alarm
    COMMENT = "comment"    # note in the history, no state change


TRANSITIONS: dict[Action, dict[CaseState, CaseState]] = {
    Action.REGISTER: {S.REPORTED: S.REGISTERED},
    Action.DISPATCH: {S.REGISTERED: S.DISPATCHED, S.RETURNED: S.DISPATCHED,
                      S.REWORK: S.DISPATCHED},
    Action.ACCEPT: {S.DISPATCHED: S.IN_PROGRESS},
    Action.START: {S.DISPATCHED: S.IN_PROGRESS},
    Action.HANDLED: {S.DISPATCHED: S.HANDLED, S.IN_PROGRESS: S.HANDLED},
    Action.RETURN: {S.DISPATCHED: S.RETURNED, S.IN_PROGRESS: S.RETURNED},
    Action.VERIFY: {S.HANDLED: S.VERIFIED},
    Action.REWORK: {S.HANDLED: S.REWORK},
    Action.CLOSE: {S.VERIFIED: S.CLOSED},
    Action.CANCEL: {S.REPORTED: S.CANCELLED, S.REGISTERED: S.CANCELLED,
                    S.DISPATCHED: S.CANCELLED, S.RETURNED: S.CANCELLED},
    Action.COMMENT: {s: s for s in CaseState},
}

# Actions the dispatch system may send in callbacks.
CALLBACK_ACTIONS = frozenset({Action.ACCEPT, Action.START, Action.HANDLED, Action.RETURN,
                              Action.VERIFY, Action.CLOSE, Action.CANCEL, Action.COMMENT})


def allowed_actions(state: CaseState) -> list[str]:
    """Actions allowed in ``state``, in declaration order."""
    return [a.value for a, table in TRANSITIONS.items() if state in table]


def next_state(case_id: int, state: CaseState, action: Action) -> CaseState:
    """The state after ``action``; raises IllegalTransitionError when not allowed."""
    target = TRANSITIONS[action].get(state)
    if target is None:
        raise IllegalTransitionError(case_id, state.value, action.value, allowed_actions(state))
    return target
