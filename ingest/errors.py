"""Exception root of the ingest package."""


class IngestError(Exception):
    """Base class of every error raised by :mod:`ingest`."""


class BrokerUnavailableError(IngestError):
    """The MQTT broker could not be reached."""


class BrokerRejectedError(IngestError):
    """The MQTT broker cannot be used as configured: TLS verification failed or the
    broker refused the credentials. Retrying would not help."""


class WriteError(IngestError):
    """A write to the time-series database failed.

    ``retryable`` says whether trying the same write again may succeed;
    ``bad_lines`` that the server refused some of the lines themselves (HTTP 400),
    so splitting the chunk lets the good lines land.
    """

    RETRY = "retry"
    LINES = "lines"

    def __init__(self, message: str, *, retryable: bool, bad_lines: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.bad_lines = bad_lines
