"""Run every panel and annotation query of rendered dashboards against a real InfluxDB."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dashboards.errors import QueryError
from dashboards.model import PanelQuery
from dashboards.query import InfluxQLClient, Series
from dashboards.templating import TimeRange, interpolate, resolve


@dataclass(frozen=True, slots=True)
class Target:
    """One query found in dashboard JSON."""

    panel: str
    ref_id: str
    query: str
    format: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one query returned (after expansion) and which expected columns were missing."""

    dashboard: str
    target: Target
    expanded: str
    rows: int
    columns: tuple[str, ...]
    missing: tuple[str, ...]
    error: str = ""

    @property
    def ok(self) -> bool:
        """Rows came back with every column the panel uses."""
        return not self.error and self.rows > 0 and not self.missing


def targets_of(dashboard: Mapping[str, Any]) -> list[Target]:
    """Every InfluxQL target of every panel (rows included) and every annotation."""
    out: list[Target] = []

    def walk(panels: Sequence[Mapping[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets") or []:
                if "query" in t:
                    out.append(Target(str(p.get("title", "")), str(t.get("refId", "")),
                                      str(t["query"]), str(t.get("resultFormat",
                                                                 "time_series"))))
            walk(p.get("panels") or [])

    walk(dashboard.get("panels") or [])
    for a in dashboard.get("annotations", {}).get("list", []):
        if a.get("query"):
            out.append(Target(f"annotation: {a.get('name', '')}", "Anno", str(a["query"]),
                              "table"))
    return out


def columns_of(series: Sequence[Series]) -> tuple[str, ...]:
    """Result columns plus GROUP BY tag keys (table format shows both)."""
    cols: list[str] = []
    for s in series:
        for c in (*s.columns, *(k for k, _ in s.tags)):
            if c not in cols:
                cols.append(c)
    return tuple(cols)


def run_dashboard(dashboard: Mapping[str, Any], expected: Sequence[PanelQuery],
                  client: InfluxQLClient, tr: TimeRange,
                  selection: Mapping[str, Sequence[str]] | None = None) -> list[Outcome]:
    """Expand and run each target of ``dashboard``; compare with the expected columns."""
    uid = str(dashboard.get("uid", ""))
    wanted = {(q.panel, q.ref_id, q.query): q.columns for q in expected if q.dashboard == uid}
    resolved = resolve(dashboard, client, tr, selection)
    out: list[Outcome] = []
    for t in targets_of(dashboard):
        expanded = interpolate(t.query, resolved, tr)
        need = wanted.get((t.panel, t.ref_id, t.query))
        try:
            series = client.query(expanded)
        except QueryError as exc:
            out.append(Outcome(uid, t, expanded, 0, (), (), str(exc)))
            continue
        cols = columns_of(series)
        rows = sum(len(s.values) for s in series)
        if need is None:
            out.append(Outcome(uid, t, expanded, rows, cols, (),
                               "query not declared in dashboards.definitions"))
            continue
        missing = tuple(c for c in need if c not in cols)
        out.append(Outcome(uid, t, expanded, rows, cols, missing))
    return out
