"""InfluxDB line protocol: escaping and the one encoder of declared measurements.

A :class:`Measurement` declares a measurement's name, tag keys and fields (each with a
:class:`FieldType`); :meth:`Measurement.line` is the only way the service builds a line,
and it refuses a tag or field the declaration does not name, or a value of the wrong
type. The declarations themselves are in :mod:`tsdb.schema`. This package imports
nothing of the project, so every layer (devices, ingest, alerts, dashboards, lifeline)
may use it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

FieldValue = float | int | str | bool | None


class SchemaError(ValueError):
    """A line that does not match its measurement's declaration."""


class FieldType(enum.StrEnum):
    """An InfluxDB field type (a field keeps its first type for good in a shard)."""

    FLOAT = "float"
    INT = "integer"
    STRING = "string"
    BOOL = "boolean"


def escape_tag(value: str) -> str:
    """Escape a measurement, tag key, tag value or field key for line protocol."""
    return value.replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def escape_string_field(value: str) -> str:
    """Quote a string field value for line protocol."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_value(kind: FieldType, value: float | int | str | bool) -> str:
    """``value`` as a line protocol field value of type ``kind`` (SchemaError if it is
    not one): floats as ``repr``, integers (and bools declared integer) with ``i``."""
    if kind is FieldType.FLOAT:
        if isinstance(value, float | int) and not isinstance(value, bool):
            return repr(float(value))
    elif kind is FieldType.INT:
        if isinstance(value, int):
            return f"{int(value)}i"
    elif kind is FieldType.STRING:
        if isinstance(value, str):
            return escape_string_field(value)
    elif isinstance(value, bool):
        return "true" if value else "false"
    raise SchemaError(f"{value!r} is not a {kind.value} field value")


@dataclass(frozen=True, slots=True)
class Field:
    """A declared field. A name ending in ``*`` declares every field starting with the
    rest (``dead_*``: one field per dead-letter reason)."""

    name: str
    type: FieldType
    doc: str = ""

    @property
    def is_pattern(self) -> bool:
        """Whether this declares a family of fields by prefix."""
        return self.name.endswith("*")

    def matches(self, key: str) -> bool:
        """Whether field key ``key`` is this field (or one of its family)."""
        if self.is_pattern:
            return key.startswith(self.name[:-1])
        return key == self.name


class Measurement:
    """A declared measurement and its encoder.

    ``tags`` are written in declaration order; a tag with an empty value is left out
    (line protocol has no empty tag values). Fields are written in the order given.
    """

    __slots__ = ("_exact", "_patterns", "doc", "fields", "name", "tags", "writer")

    def __init__(self, name: str, tags: Iterable[str], fields: Iterable[Field], *,
                 doc: str = "", writer: str = "") -> None:
        self.name = name
        self.tags: tuple[str, ...] = tuple(tags)
        self.fields: tuple[Field, ...] = tuple(fields)
        self.doc = doc
        self.writer = writer
        self._exact = {f.name: f for f in self.fields if not f.is_pattern}
        self._patterns = tuple(f for f in self.fields if f.is_pattern)

    def __repr__(self) -> str:
        return f"Measurement({self.name!r})"

    def field(self, key: str) -> Field:
        """The declaration of field key ``key`` (SchemaError if undeclared)."""
        found = self._exact.get(key)
        if found is not None:
            return found
        for f in self._patterns:
            if f.matches(key):
                return f
        raise SchemaError(f"{self.name}: field {key!r} is not declared")

    def has_field(self, key: str) -> bool:
        """Whether ``key`` is a declared field of this measurement."""
        try:
            self.field(key)
        except SchemaError:
            return False
        return True

    def named(self, name: str, fields: Iterable[Field] | None = None) -> Measurement:
        """The same tags (and fields, unless given) under another name: one measurement
        of a family such as the device-type measurements."""
        return Measurement(name, self.tags, self.fields if fields is None else fields,
                           doc=self.doc, writer=self.writer)

    def _series_key(self, tags: Mapping[str, str]) -> str:
        for key in tags:
            if key not in self.tags:
                raise SchemaError(f"{self.name}: tag {key!r} is not declared")
        parts = [escape_tag(self.name)]
        for key in self.tags:
            value = tags.get(key)
            if value:
                parts.append(f"{key}={escape_tag(value)}")
        return ",".join(parts)

    def prefix(self, tags: Mapping[str, str], field: str) -> str:
        """``measurement,tags field=``: the start of a line whose value the caller
        appends (the ingest hot path caches one per series)."""
        self.field(field)
        return f"{self._series_key(tags)} {escape_tag(field)}="

    def line(self, tags: Mapping[str, str], fields: Mapping[str, FieldValue],
             ts_ns: int) -> str:
        """One line: ``measurement,tags fields ts_ns``. A ``None`` field value is left
        out; SchemaError on an undeclared tag or field, a mistyped value or no fields."""
        parts = [f"{escape_tag(key)}={encode_value(self.field(key).type, value)}"
                 for key, value in fields.items() if value is not None]
        if not parts:
            raise SchemaError(f"{self.name}: a line needs at least one field")
        return f"{self._series_key(tags)} {','.join(parts)} {int(ts_ns)}"
