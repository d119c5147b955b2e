"""Exception root of the alerts package."""


class AlertsError(Exception):
    """Base class of every error raised by :mod:`alerts`."""


class DeliveryError(AlertsError):
    """A webhook delivery failed; ``retryable`` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
