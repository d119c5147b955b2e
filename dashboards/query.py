"""A small InfluxQL client (``/query``), as Grafana's InfluxDB datasource calls it.

InfluxDB 1.x answers directly; 2.x and 3.x answer InfluxQL on the same ``/query``
endpoint through a DBRP mapping, with ``Authorization: Token …``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from dashboards.errors import QueryError


@dataclass(frozen=True, slots=True)
class Series:
    """One series of a result: name, GROUP BY tags, columns and rows (time in epoch ms)."""

    name: str
    tags: tuple[tuple[str, str], ...]
    columns: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]

    def tag(self, key: str) -> str:
        """A GROUP BY tag value ('' if absent)."""
        return dict(self.tags).get(key, "")

    def records(self) -> list[dict[str, Any]]:
        """Rows as mappings, the GROUP BY tags included as columns (table format)."""
        tags = dict(self.tags)
        return [{**tags, **dict(zip(self.columns, row, strict=True))} for row in self.values]


class InfluxQLClient:
    """Runs InfluxQL queries against one database."""

    def __init__(self, url: str, database: str, *, token: str = "", username: str = "",
                 password: str = "", timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.database = database
        headers = {"Authorization": f"Token {token}"} if token else {}
        auth = (username, password) if username else None
        self._http = httpx.Client(timeout=timeout, headers=headers, auth=auth)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> InfluxQLClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, q: str) -> list[Series]:
        """Every series of the (single statement's) result; raises :class:`QueryError`."""
        try:
            resp = self._http.get(f"{self.url}/query",
                                  params={"db": self.database, "q": q, "epoch": "ms"})
        except httpx.HTTPError as exc:
            raise QueryError(f"InfluxDB at {self.url} unreachable: {exc}") from exc
        try:
            body = resp.json()
        except ValueError as exc:
            raise QueryError(f"InfluxDB answered {resp.status_code} without JSON") from exc
        if resp.status_code >= 400 or not isinstance(body, dict):
            detail = body.get("error") if isinstance(body, dict) else body
            raise QueryError(f"InfluxDB refused the query ({resp.status_code}): {detail}: {q}")
        out: list[Series] = []
        for result in body.get("results", []):
            if "error" in result:
                raise QueryError(f"InfluxQL error: {result['error']}: {q}")
            for s in result.get("series", []):
                out.append(Series(
                    name=str(s.get("name", "")),
                    tags=tuple(sorted((str(k), str(v)) for k, v in (s.get("tags") or {}).items())),
                    columns=tuple(s.get("columns", [])),
                    values=tuple(tuple(row) for row in s.get("values", [])),
                ))
        return out
