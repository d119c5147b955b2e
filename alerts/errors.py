"""Exception root of the alerts package."""


class AlertsError(Exception):
    """Base class of every error raised by :mod:`alerts`."""


class DeliveryError(AlertsError):
    """A webhook delivery failed; ``retryable`` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class StoreError(AlertsError):
    """The alerts/cases database could not be read or written."""


class NotFoundError(AlertsError):
    """An alert, case, silence or delivery does not exist."""


class IllegalTransitionError(AlertsError):
    """A case action is not allowed in the case's current state."""

    def __init__(self, case_id: int, state: str, action: str, allowed: list[str]) -> None:
        shown = ", ".join(allowed) or "none"
        super().__init__(f"case {case_id}: action {action!r} is not allowed in state "
                         f"{state!r} (allowed: {shown})")
        self.case_id = case_id
        self.state = state
        self.action = action
        self.allowed = allowed


class ConflictError(AlertsError):
    """A request conflicts with stored data (e.g. an idempotency key reused for another body)."""


class ReplayError(ConflictError):
    """A signed request (the same signature) was received before: it is not applied again."""
