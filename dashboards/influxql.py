"""An InfluxQL raw-query target for grafana-foundation-sdk (which ships no InfluxDB builder).

Implements the SDK's dataquery protocol (a :class:`Dataquery` model with ``to_json`` /
``from_json`` and a :class:`Builder`), and registers itself as the ``influxdb`` dataquery
variant so dashboards containing it load back through the SDK's models.
"""

from __future__ import annotations

import typing

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard

ResultFormat = typing.Literal["time_series", "table"]
DATASOURCE_TYPE = "influxdb"


class InfluxQLQuery(cogvariants.Dataquery):
    """A raw InfluxQL query as Grafana's InfluxDB datasource stores it."""

    ref_id: str
    datasource: dashboard.DataSourceRef | None
    query: str
    raw_query: bool
    result_format: ResultFormat
    alias: str | None
    hide: bool | None

    def __init__(self, ref_id: str = "", datasource: dashboard.DataSourceRef | None = None,
                 query: str = "", raw_query: bool = True,
                 result_format: ResultFormat = "time_series", alias: str | None = None,
                 hide: bool | None = None) -> None:
        self.ref_id = ref_id
        self.datasource = datasource
        self.query = query
        self.raw_query = raw_query
        self.result_format = result_format
        self.alias = alias
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        """The target as Grafana stores it."""
        payload: dict[str, object] = {"refId": self.ref_id, "query": self.query,
                                      "rawQuery": self.raw_query,
                                      "resultFormat": self.result_format}
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        if self.alias is not None:
            payload["alias"] = self.alias
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> typing.Self:
        """Load a target from dashboard JSON."""
        ds = data.get("datasource")
        fmt = data.get("resultFormat", "time_series")
        return cls(
            ref_id=str(data.get("refId", "")),
            datasource=dashboard.DataSourceRef.from_json(ds) if isinstance(ds, dict) else None,
            query=str(data.get("query", "")),
            raw_query=bool(data.get("rawQuery", True)),
            result_format="table" if fmt == "table" else "time_series",
            alias=data.get("alias"),
            hide=data.get("hide"),
        )


class InfluxQL(cogbuilder.Builder[InfluxQLQuery]):
    """Builder of :class:`InfluxQLQuery` in the SDK's fluent style."""

    def __init__(self, query: str) -> None:
        self._internal = InfluxQLQuery(query=query)

    def build(self) -> InfluxQLQuery:
        """The built target."""
        return self._internal

    def ref_id(self, ref_id: str) -> typing.Self:
        """Reference id (A, B, …)."""
        self._internal.ref_id = ref_id
        return self

    def datasource(self, ref: dashboard.DataSourceRef) -> typing.Self:
        """Datasource reference."""
        self._internal.datasource = ref
        return self

    def table(self) -> typing.Self:
        """Result format ``table`` (tags become columns)."""
        self._internal.result_format = "table"
        return self

    def alias(self, alias: str) -> typing.Self:
        """Series alias pattern (``$tag_device``)."""
        self._internal.alias = alias
        return self


def variant_config() -> cogruntime.DataqueryConfig:
    """The SDK runtime registration of this dataquery."""
    return cogruntime.DataqueryConfig(identifier=DATASOURCE_TYPE,
                                      from_json_hook=InfluxQLQuery.from_json)


def register() -> None:
    """Register the ``influxdb`` dataquery variant with the SDK runtime (idempotent)."""
    cogruntime.Runtime().register_dataquery_variant(variant_config())
