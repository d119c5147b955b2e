"""What the dashboards are made of, independent of Grafana's JSON: queries and their columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Format = Literal["time_series", "table"]


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One InfluxQL target of a panel (or annotation) and the columns the panel uses.

    ``columns`` are result columns or tag keys (a ``GROUP BY`` tag becomes a column in
    table format) the panel reads: its fields, joins, transformations, geomap location.
    """

    dashboard: str  # dashboard uid
    panel: str  # panel title (or "annotation: <name>")
    ref_id: str
    query: str
    format: Format
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GrafanaTarget:
    """Where rendered or pushed dashboards point: the InfluxDB datasource and folder."""

    datasource_uid: str = "lifeline-influxdb"
    datasource_name: str = "lifeline InfluxDB"
    folder: str = "citylifeline"
    timezone: str = "Asia/Shanghai"
    device_types: tuple[str, ...] = ()  # the catalogue's types (empty: the built-in one)
    api_url: str = "http://127.0.0.1:8080"  # the lifeline API as browsers reach it (links)
    case_url: str = ""  # a case's page, "{case_id}" in it; empty: the API's case route

    def case_link(self) -> str:
        """URL template of a case's page with ``{case_id}`` in it."""
        return self.case_url or f"{self.api_url.rstrip('/')}/api/v1/cases/{{case_id}}"
