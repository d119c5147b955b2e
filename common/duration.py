"""Durations written as ``"30s"``, ``"5m"``, ``"1h"``, ``"7d"``, ``"250ms"`` (or a number
of seconds), parsed once where settings and rule files load.

:class:`Duration` is the value settings keep: a ``str`` (its normalised text, so
``config check`` and error messages still show ``"1h"`` and it compares equal to
``"1h"``) that carries the parsed ``.ns`` / ``.seconds``; code reads those and never
parses at run time. :data:`DurationNs` is the rule models' form: a plain ``int`` of
nanoseconds (rule fingerprints are those of before).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, NoReturn

from pydantic import BeforeValidator, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_NS: Final = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
                   "h": 3_600_000_000_000, "d": 86_400_000_000_000}
DAY_NS: Final = _UNIT_NS["d"]
MAX_DURATION_NS: Final = 3650 * DAY_NS
_PATTERN: Final = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)\s*$"


def _parse(value: object) -> tuple[int, str]:
    """(nanoseconds, normalised text) of ``value``; raises ``ValueError``."""
    if isinstance(value, Duration):
        return value.ns, str.__str__(value)
    if isinstance(value, bool):
        raise ValueError("a duration is a string like '30s' or a number of seconds")
    if isinstance(value, int | float):
        if not value >= 0:
            raise ValueError("a duration cannot be negative")
        if value * 1_000_000_000 > MAX_DURATION_NS:
            raise ValueError("a duration must be at most 3650 days")
        number = int(value) if float(value).is_integer() else value
        return int(value * 1_000_000_000), f"{number}s"
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            ns = int(float(match.group(1)) * _UNIT_NS[match.group(2)])
            if ns > MAX_DURATION_NS:
                raise ValueError("a duration must be at most 3650 days")
            return ns, match.group(1) + match.group(2)
    raise ValueError(f"invalid duration {str(value)[:40]!r}: use e.g. '30s', '5m', '1h', '7d'")


def parse_duration_ns(value: object) -> int:
    """``"30s"``, ``"5m"``, ``"1h"``, ``"7d"``, ``"250ms"`` or seconds as a number → ns.

    For text read at load time (settings, rule files, command-line options); code
    holding a :class:`Duration` reads its ``.ns``."""
    return _parse(value)[0]


class Duration(str):
    """A parsed duration: its text (``str(d) == "1h"``) with ``.ns`` and ``.seconds``.

    Immutable. ``Duration("")`` is not valid; :data:`OptionalDuration` fields hold
    :data:`NO_DURATION` (text ``""``, 0 ns, falsy) for "not set"."""

    ns: int
    """The duration in nanoseconds."""

    def __new__(cls, value: object) -> Duration:
        """Parse ``value`` (text such as ``"5m"`` or a number of seconds)."""
        if isinstance(value, Duration):
            return value
        ns, text = _parse(value)
        return cls._make(text, ns)

    @classmethod
    def _make(cls, text: str, ns: int) -> Duration:
        self = str.__new__(cls, text)
        object.__setattr__(self, "ns", ns)
        return self

    @property
    def seconds(self) -> float:
        """The duration in seconds."""
        return self.ns / 1e9

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Duration is immutable (cannot set {name!r})")

    def __repr__(self) -> str:
        return f"Duration({str.__str__(self)!r})"

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (_restore, (str.__str__(self), self.ns))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        """Validate text or a number of seconds into a Duration; serialise as its text."""
        return core_schema.no_info_plain_validator_function(
            cls, serialization=core_schema.plain_serializer_function_ser_schema(
                str.__str__, when_used="json"))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """A string such as ``"30s"`` (or a number of seconds)."""
        return {"anyOf": [{"type": "string", "pattern": _PATTERN},
                          {"type": "number", "minimum": 0}]}


def _restore(text: str, ns: int) -> Duration:
    return Duration._make(text, ns)


NO_DURATION: Final = Duration._make("", 0)
"""The "not set" value of an :data:`OptionalDuration` field."""


def _optional(value: object) -> object:
    return NO_DURATION if isinstance(value, str) and not value.strip() else value


OptionalDuration = Annotated[Duration, BeforeValidator(_optional)]
"""A :class:`Duration` or ``""`` (not set: :data:`NO_DURATION`)."""

DurationNs = Annotated[int, BeforeValidator(parse_duration_ns)]
"""A duration field of a rule model: nanoseconds, parsed when the rule file loads."""
