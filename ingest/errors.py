"""Exception root of the ingest package."""


class IngestError(Exception):
    """Base class of every error raised by :mod:`ingest`."""


class BrokerUnavailableError(IngestError):
    """The MQTT broker could not be reached."""


class WriteError(IngestError):
    """A write to the time-series database failed.

    ``retryable`` says whether trying the same write again may succeed.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable
