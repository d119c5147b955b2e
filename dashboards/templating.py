"""Template expansion as Grafana's InfluxDB datasource does it.

- ``$timeFilter`` → ``time >= 1700000000000ms and time <= 1700003600000ms`` (absolute
  range) or ``time >= now() - 6h`` (relative range ending now);
- ``$__interval`` / ``$__interval_ms`` → the range divided by the data points, rounded
  like Grafana's ``roundInterval``; ``${__from}`` / ``${__to}`` → the range in epoch ms;
- ``$var``, ``${var}``, ``[[var]]`` → the variable's value: a single value as is, several
  values (multi-value or All) regex-escaped and joined as ``(a|b)``; All uses the
  variable's ``allValue`` when it has one, else every option;
- query variables are answered by InfluxDB (``SHOW TAG VALUES …``) in dashboard
  order, each with the earlier ones already substituted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dashboards.errors import DashboardsError
from dashboards.query import InfluxQLClient

ALL = "$__all"
_VAR_RE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")
_REGEX_SPECIAL = re.compile(r"[\\^$.|?*+()\[\]{}/]")

# Grafana's kbn.roundInterval: (upper bound in ms, rounded interval in ms)
_ROUND = ((15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
          (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000),
          (45000, 30000), (90000, 60000), (210000, 120000), (450000, 300000),
          (750000, 600000), (1050000, 900000), (1500000, 1200000), (2700000, 1800000),
          (5400000, 3600000), (9000000, 7200000), (16200000, 10800000),
          (32400000, 21600000), (86400000, 43200000), (604800000, 86400000),
          (1814400000, 604800000), (3628800000, 2592000000))


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A dashboard time range in epoch milliseconds; ``relative`` ends at now."""

    from_ms: int
    to_ms: int
    relative: bool = False

    def __post_init__(self) -> None:
        if self.to_ms <= self.from_ms:
            raise DashboardsError("time range: 'to' must be after 'from'")

    def filter(self) -> str:
        """``$timeFilter``."""
        if self.relative:
            return f"time >= now() - {interval_text(self.to_ms - self.from_ms)}"
        return f"time >= {self.from_ms}ms and time <= {self.to_ms}ms"


def round_interval(ms: float) -> int:
    """Grafana's rounding of a computed interval."""
    for bound, value in _ROUND:
        if ms < bound:
            return value
    return 31536000000  # a year


def interval_text(ms: int) -> str:
    """``1h``, ``5m``, ``10s``, ``200ms`` (largest exact unit)."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def interval_ms(tr: TimeRange, max_data_points: int = 1000, min_ms: int = 1000) -> int:
    """``$__interval`` in ms: range / data points, rounded, at least ``min_ms``."""
    return max(min_ms, round_interval((tr.to_ms - tr.from_ms) / max_data_points))


def regex_escape(value: str) -> str:
    """Escape a value for an InfluxQL ``/regex/`` (as Grafana's influxSpecialRegexEscape)."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


@dataclass(frozen=True, slots=True)
class Variable:
    """A dashboard variable as stored in the dashboard JSON."""

    name: str
    kind: str  # query | custom
    query: str
    multi: bool
    include_all: bool
    all_value: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Variable:
        """Read one ``templating.list`` entry."""
        query = data.get("query", "")
        if isinstance(query, dict):
            query = query.get("query", "")
        return cls(name=str(data["name"]), kind=str(data.get("type", "query")),
                   query=str(query), multi=bool(data.get("multi")),
                   include_all=bool(data.get("includeAll")),
                   all_value=str(data.get("allValue") or ""))


@dataclass(frozen=True, slots=True)
class Resolved:
    """A variable with its options and the selection (``[ALL]`` for All)."""

    variable: Variable
    options: tuple[str, ...]
    selected: tuple[str, ...]

    def text(self) -> str:
        """The value substituted into a query."""
        v = self.variable
        if self.selected == (ALL,):
            if v.all_value:
                return v.all_value
            values: Sequence[str] = self.options
        else:
            values = self.selected
        if len(values) == 1 and not (v.multi or v.include_all):
            return values[0]
        escaped = [regex_escape(x) for x in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def variables_of(dashboard: Mapping[str, Any]) -> list[Variable]:
    """The dashboard's variables in order."""
    return [Variable.from_json(v) for v in dashboard.get("templating", {}).get("list", [])]


def interpolate(query: str, resolved: Mapping[str, Resolved], tr: TimeRange,
                max_data_points: int = 1000) -> str:
    """Expand ``$timeFilter``, ``$__interval`` and variables in one query."""
    step = interval_ms(tr, max_data_points)
    builtins = {"timeFilter": tr.filter(), "__interval": interval_text(step),
                "__interval_ms": str(step), "__from": str(tr.from_ms), "__to": str(tr.to_ms)}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in builtins:
            return builtins[name]
        if name in resolved:
            return resolved[name].text()
        return m.group(0)  # unknown: left as is, like Grafana

    return _VAR_RE.sub(sub, query)


def resolve(dashboard: Mapping[str, Any], client: InfluxQLClient, tr: TimeRange,
            selection: Mapping[str, Sequence[str]] | None = None) -> dict[str, Resolved]:
    """Answer every variable's query in order; ``selection`` picks values (default All)."""
    chosen = selection or {}
    out: dict[str, Resolved] = {}
    for v in variables_of(dashboard):
        if v.kind == "custom":
            options = tuple(x.strip() for x in v.query.split(",") if x.strip())
        elif v.kind == "query":
            q = interpolate(v.query, out, tr)
            values: list[str] = []
            for s in client.query(q):
                col = s.columns.index("value") if "value" in s.columns else -1
                values.extend(str(row[col]) for row in s.values)
            options = tuple(sorted(set(values)))
        else:
            raise DashboardsError(f"variable {v.name}: unsupported type {v.kind!r}")
        pick = tuple(chosen.get(v.name, (ALL,)))
        if pick != (ALL,) and not v.multi and len(pick) > 1:
            raise DashboardsError(f"variable {v.name} takes one value")
        out[v.name] = Resolved(v, options, pick)
    return out
