"""The project's shared vocabulary, at the bottom of the dependency graph (no project
imports): :class:`~common.duration.Duration`, :class:`~common.severity.Severity`, the
bounded TOML loader :mod:`common.safetoml` and the retry policy :mod:`common.retry`."""

from common.duration import (
    DAY_NS,
    MAX_DURATION_NS,
    Duration,
    DurationNs,
    OptionalDuration,
    parse_duration_ns,
)
from common.retry import Backoff, retry_until
from common.severity import Severity

__all__ = ["DAY_NS", "MAX_DURATION_NS", "Backoff", "Duration", "DurationNs",
           "OptionalDuration", "Severity", "parse_duration_ns", "retry_until"]
