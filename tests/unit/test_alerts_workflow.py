"""The case state machine: every legal transition is accepted, every other one refused."""

from __future__ import annotations

import itertools

import pytest

from alerts.cases.model import CaseState
from alerts.cases.workflow import CALLBACK_ACTIONS, TRANSITIONS, Action, allowed_actions, next_state
from alerts.errors import IllegalTransitionError

S = CaseState
LEGAL = {
    (S.REPORTED, Action.REGISTER): S.REGISTERED,
    (S.REGISTERED, Action.DISPATCH): S.DISPATCHED,
    (S.RETURNED, Action.DISPATCH): S.DISPATCHED,
    (S.REWORK, Action.DISPATCH): S.DISPATCHED,
    (S.DISPATCHED, Action.ACCEPT): S.IN_PROGRESS,
    (S.DISPATCHED, Action.START): S.IN_PROGRESS,
    (S.DISPATCHED, Action.HANDLED): S.HANDLED,
    (S.IN_PROGRESS, Action.HANDLED): S.HANDLED,
    (S.DISPATCHED, Action.RETURN): S.RETURNED,
    (S.IN_PROGRESS, Action.RETURN): S.RETURNED,
    (S.HANDLED, Action.VERIFY): S.VERIFIED,
    (S.HANDLED, Action.REWORK): S.REWORK,
    (S.VERIFIED, Action.CLOSE): S.CLOSED,
    (S.REPORTED, Action.CANCEL): S.CANCELLED,
    (S.REGISTERED, Action.CANCEL): S.CANCELLED,
    (S.DISPATCHED, Action.CANCEL): S.CANCELLED,
    (S.RETURNED, Action.CANCEL): S.CANCELLED,
    **{(s, Action.COMMENT): s for s in CaseState},
}


@pytest.mark.parametrize(("state", "action"), list(itertools.product(CaseState, Action)),
                         ids=str)
def test_every_state_action_pair(state: CaseState, action: Action) -> None:
    expected = LEGAL.get((state, action))
    if expected is not None:
        assert next_state(7, state, action) is expected
        assert action.value in allowed_actions(state)
    else:
        with pytest.raises(IllegalTransitionError) as info:
            next_state(7, state, action)
        err = info.value
        assert (err.case_id, err.state, err.action) == (7, state.value, action.value)
        msg = f"case 7: action {action.value!r} is not allowed in state {state.value!r}"
        assert msg in str(err)
        assert err.allowed == allowed_actions(state)
        assert action.value not in err.allowed


def test_table_is_exactly_the_documented_one() -> None:
    table = {(s, a): t for a, row in TRANSITIONS.items() for s, t in row.items()}
    assert table == LEGAL


def test_terminal_states_allow_only_comments() -> None:
    for state in (S.CLOSED, S.CANCELLED):
        assert allowed_actions(state) == ["comment"]


def test_dispatch_system_cannot_register_dispatch_or_rework() -> None:
    assert {Action.REGISTER, Action.DISPATCH, Action.REWORK}.isdisjoint(CALLBACK_ACTIONS)
    assert {a.value for a in CALLBACK_ACTIONS} == {
        "accept", "start", "handled", "return", "verify", "close", "cancel", "comment"}
