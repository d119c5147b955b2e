"""The root exception of the dashboards package."""

from __future__ import annotations


class DashboardsError(Exception):
    """Anything the dashboards package refuses or cannot do."""


class QueryError(DashboardsError):
    """InfluxDB refused or could not answer a dashboard query."""


class PushError(DashboardsError):
    """Pushing to a Grafana server failed (auth, unreachable, too old, refused)."""
