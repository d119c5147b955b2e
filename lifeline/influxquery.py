"""Small InfluxQL helpers used by the demo, the CLI and the tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx


def influxql(url: str, database: str, query: str, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Run an InfluxQL query; returns the ``series`` of the first result (may be empty)."""
    resp = httpx.get(f"{url.rstrip('/')}/query", params={"db": database, "q": query},
                     timeout=timeout)
    if resp.status_code == 400 and "error" in resp.text:
        raise ValueError(f"InfluxQL error: {resp.json().get('error')}")
    resp.raise_for_status()
    results = resp.json().get("results", [])
    if not results:
        return []
    first = results[0]
    if "error" in first:
        raise ValueError(f"InfluxQL error: {first['error']}")
    series: list[dict[str, Any]] = first.get("series", [])
    return series


def count_values(url: str, database: str, measurements: Sequence[str]) -> int:
    """Number of stored metric values in ``measurements`` (``flags`` not counted)."""
    if not measurements:
        return 0
    names = ",".join(f'"{m}"' for m in measurements)
    total = 0
    query = f"SELECT count(*) FROM {names}"  # noqa: S608 - names are our measurement names
    for series in influxql(url, database, query):
        columns = series["columns"]
        for row in series["values"]:
            for col, val in zip(columns, row, strict=True):
                if col.startswith("count_") and col != "count_flags" and val:
                    total += int(val)
    return total
