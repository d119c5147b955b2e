# ruff: noqa: S608 - InfluxQL built from constants and Grafana variables, never user input
"""The duty-staff dashboards, defined with grafana-foundation-sdk builders.

Every panel query is InfluxQL (answered by InfluxDB 1.x, 2.x with a DBRP mapping and
3.x) and is recorded as a :class:`~dashboards.model.PanelQuery` with the columns the
panel uses, so tests and the shift report run exactly what Grafana runs.

Measurements read (docs/design.md schema): one per device type (tags device, grid,
district, unit), ``lifeline_alert``, ``lifeline_case``, ``lifeline_kpi``,
``lifeline_ingest``, ``lifeline_device_status``, and two written for dashboards by
the service: ``lifeline_device_info`` (registry: location, DMA) and
``lifeline_service`` (rule engine and webhook counters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import bargauge, geomap, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.influxql import DATASOURCE_TYPE, InfluxQL
from dashboards.model import Format, GrafanaTarget, PanelQuery
from devices.catalogue import Catalogue
from tsdb import schema

DEVICE_TYPES = tuple(Catalogue.builtin().types)  # the built-in catalogue's device types
GAS_LEVELS = (25.0, 50.0)  # %LEL, GB/T 50493-2019 level 1 / 2 (rules/builtin/gas.toml)
DRAIN_LEVELS = (3.0, 4.0)  # m, drain-level-high / drain-level-overflow (rules/builtin/drain.toml)
MANHOLE_TILT = 15.0  # degrees, manhole-cover-tilt
WATER_PRESSURE_LOW = 0.14  # MPa, water-pressure-low
HEAT_SUPPLY_HIGH = 130.0  # °C, catalogue limit

# measurement names (tsdb.schema): every query names them through these
INFO = schema.DEVICE_INFO.name
M_ALERT, M_CASE, M_KPI = schema.ALERT.name, schema.CASE.name, schema.KPI.name
M_INGEST, M_SERVICE = schema.INGEST.name, schema.SERVICE.name
M_STATUS = schema.DEVICE_STATUS.name
SEVERITY_COLOURS = {"critical": "dark-red", "major": "red", "minor": "orange",
                    "warning": "yellow", "info": "blue"}

# Filters; every variable regex is anchored, multi-value expands to (a|b) like Grafana.
F_DEV = ('"district" =~ /^$district$/ AND "grid" =~ /^$grid$/ AND "device" =~ /^$device$/')
F_TYPED = '"grid" =~ /^$grid$/ AND "type" =~ /^$type$/ AND "device" =~ /^$device$/'
# Current state (last value up to the end of the range, whenever it was written).
UNTIL_TO = "time <= ${__to}ms"
# State panels (alerts firing, cases open at the end of the range): the rows of the last
# STATE_LOOKBACK before the end, whatever the range shown, so a case opened yesterday and
# still open is listed in a 1-hour view (an item unchanged for longer is not seen; the
# shift report reads the database instead). Same default as `lifeline report --lookback`.
STATE_LOOKBACK = "30d"


def state_window(lookback: str) -> str:
    """The time condition of the state panels: ``lookback`` (an InfluxQL duration) up to
    the end of the range."""
    return f"time <= ${{__to}}ms AND time > ${{__to}}ms - {lookback}"


STATE_WINDOW = state_window(STATE_LOOKBACK)


@dataclass(slots=True)
class Board:
    """A dashboard being built, with the queries of its panels recorded."""

    uid: str
    title: str
    target: GrafanaTarget
    builder: db.Dashboard = field(init=False)
    queries: list[PanelQuery] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.builder = (db.Dashboard(self.title).uid(self.uid).tags(["citylifeline"])
                        .time("now-24h", "now").refresh("1m").timezone(self.target.timezone)
                        .tooltip(dm.DashboardCursorSync.CROSSHAIR).editable())

    @property
    def ds(self) -> dm.DataSourceRef:
        """The InfluxDB datasource reference."""
        return dm.DataSourceRef(type_val=DATASOURCE_TYPE, uid=self.target.datasource_uid)

    def q(self, panel: str, ref_id: str, query: str, columns: Sequence[str],
          fmt: Format = "time_series", alias: str = "") -> InfluxQL:
        """An InfluxQL target, recorded with the columns the panel uses."""
        self.queries.append(PanelQuery(self.uid, panel, ref_id, query, fmt, tuple(columns)))
        target = InfluxQL(query).ref_id(ref_id).datasource(self.ds)
        if fmt == "table":
            target = target.table()
        if alias:
            target = target.alias(alias)
        return target

    def variable(self, name: str, label: str, query: str, *, all_value: str = "",
                 multi: bool = True) -> None:
        """A query variable (multi, with All) answered by InfluxDB."""
        v = (db.QueryVariable(name).label(label).query(query).datasource(self.ds)
             .multi(multi).include_all(True).refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD)
             .sort(dm.VariableSort.ALPHABETICAL_ASC)
             .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"])))
        if all_value:
            v = v.all_value(all_value)
        self.builder.with_variable(v)

    @property
    def device_types(self) -> tuple[str, ...]:
        """The catalogue's device types (built-in plus the operator's, from the target)."""
        return self.target.device_types or DEVICE_TYPES

    def types_like(self, *prefixes: str) -> tuple[str, ...]:
        """The catalogue's types whose names start with one of ``prefixes``."""
        return tuple(t for t in self.device_types if t.startswith(prefixes))

    def type_variable(self) -> None:
        """The device type variable: every type of the catalogue."""
        types = self.device_types
        self.builder.with_variable(
            db.CustomVariable("type").label("device type").values(",".join(types)).multi(True)
            .options([dm.VariableOption(selected=False, text=t, value=t) for t in types])
            .include_all(True)
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"])))

    def place_variables(self, *, device_types: Sequence[str] | None = None, dma: bool = False
                        ) -> None:
        """district → (dma) → grid → device variables, from the registry's device info."""
        self.variable("district", "district",
                      f'SHOW TAG VALUES FROM "{INFO}" WITH KEY = "district"')
        where = '"district" =~ /^$district$/'
        if dma:
            self.variable("dma", "DMA / zone",
                          f'SHOW TAG VALUES FROM "{INFO}" WITH KEY = "dma" WHERE {where}')
            where += ' AND "dma" =~ /^$dma$/'
        self.variable("grid", "grid",
                      f'SHOW TAG VALUES FROM "{INFO}" WITH KEY = "grid" WHERE {where}')
        if device_types is None:
            self.type_variable()
            types = '"type" =~ /^$type$/'
        else:
            types = '"type" =~ /^(' + "|".join(device_types) + ")$/"
        self.variable("device", "device",
                      f'SHOW TAG VALUES FROM "{INFO}" WITH KEY = "device" '
                      f'WHERE "grid" =~ /^$grid$/ AND {types}', all_value=".*")

    def annotations(self, alert_filter: str = "", case_filter: str = "") -> None:
        """Alert firings and case state changes as annotations."""
        alerts = (f'SELECT "rule", "device", "severity", "value" FROM "{M_ALERT}" '
                  'WHERE $timeFilter AND "firing" = 1' + alert_filter)
        cases = (f'SELECT "action", "case_id", "state", "severity" FROM "{M_CASE}" '
                 "WHERE $timeFilter" + case_filter)
        for name, query, colour, text, tags in (
                ("alerts firing", alerts, "red", "rule", "device,severity"),
                ("case changes", cases, "blue", "action", "case_id,state,severity")):
            self.queries.append(PanelQuery(self.uid, f"annotation: {name}", "Anno", query,
                                           "table", (text, *tags.split(","))))
            self.builder.annotation(InfluxAnnotation(name, self.ds, query, colour, text, tags))

    def build(self) -> dm.Dashboard:
        """The dashboard model; every panel names the datasource (a provisioned dashboard
        must not depend on Grafana's default datasource)."""
        model = self.builder.build()
        for panel in model.panels or []:
            if isinstance(panel, dm.Panel) and panel.datasource is None:
                panel.datasource = self.ds
        return model


class InfluxAnnotationQuery(dm.AnnotationQuery):
    """An annotation answered by an InfluxQL query (Grafana's InfluxDB annotation format)."""

    def __init__(self, query: str, text_column: str, tags_column: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.query = query
        self.text_column = text_column
        self.tags_column = tags_column

    def to_json(self) -> dict[str, object]:
        """The annotation with its query, as Grafana's InfluxDB datasource reads it."""
        payload = super().to_json()
        payload.update(query=self.query, textColumn=self.text_column,
                       tagsColumn=self.tags_column,
                       target={"refId": "Anno", "query": self.query, "rawQuery": True,
                               "resultFormat": "table"})
        return payload


class InfluxAnnotation(cogbuilder.Builder[dm.AnnotationQuery]):
    """Builder of :class:`InfluxAnnotationQuery`."""

    def __init__(self, name: str, ds: dm.DataSourceRef, query: str, colour: str,
                 text_column: str, tags_column: str) -> None:
        self._internal = InfluxAnnotationQuery(query, text_column, tags_column, name=name,
                                               datasource=ds, enable=True, icon_color=colour)

    def build(self) -> dm.AnnotationQuery:
        """The annotation."""
        return self._internal


# ---------------------------------------------------------------------------------- helpers

def _thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in steps]))


def _limit_lines(panel: timeseries.Panel, *limits: tuple[float, str]) -> timeseries.Panel:
    """Threshold lines (warning levels) on a time series panel."""
    return (panel.thresholds(_thresholds((None, "transparent"), *limits))
            .thresholds_style(cb.GraphThresholdsStyleConfig()
                              .mode(cm.GraphTresholdsStyleMode.LINE)))


def _ts(title: str, unit: str, h: int = 8, w: int = 12) -> timeseries.Panel:
    return (timeseries.Panel().title(title).unit(unit).height(h).span(w)
            .line_width(1).fill_opacity(5).span_nulls(True))


def _table(title: str, h: int = 8, w: int = 12) -> table.Panel:
    return table.Panel().title(title).height(h).span(w).show_header(True)


def _transform(kind: str, options: dict[str, Any]) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(id_val=kind, options=options)


def _filter_value(field_name: str, value: float, *, equal: bool = True
                  ) -> dm.DataTransformerConfig:
    return _transform("filterByValue", {
        "type": "include" if equal else "exclude", "match": "all",
        "filters": [{"fieldName": field_name,
                     "config": {"id": "equal", "options": {"value": value}}}]})


def _last_by(key: str, fields: Sequence[str]) -> dm.DataTransformerConfig:
    """groupBy ``key``, keeping the last value of each of ``fields``."""
    opts: dict[str, Any] = {key: {"operation": "groupby", "aggregations": []}}
    for f in fields:
        opts[f] = {"operation": "aggregate", "aggregations": ["last"]}
    return _transform("groupBy", {"fields": opts})


def _severity_mappings() -> list[dm.ValueMapping]:
    return [dm.ValueMap(options={k: dm.ValueMappingResult(color=c, text=k)
                                 for k, c in SEVERITY_COLOURS.items()})]


def _alerts_query(where: str) -> str:
    return (f'SELECT last("firing") AS "firing", last("value") AS "value" FROM "{M_ALERT}" '
            f"WHERE {STATE_WINDOW} AND {where} "
            'GROUP BY "device", "rule", "severity", "grid", "type"')


def case_link(target: GrafanaTarget) -> dict[str, Any]:
    """Data link of a ``case_id`` cell: the case's page (dispatch system or API)."""
    return {"title": "case ${__value.raw}", "targetBlank": True,
            "url": target.case_link().replace("{case_id}", "${__value.raw}")}


def alert_link(target: GrafanaTarget) -> dict[str, Any]:
    """Data link of an alert row (``device`` and ``rule`` fields): the alert in the API,
    which names its ``case_id``."""
    api = target.api_url.rstrip("/")
    return {"title": "alert and its case (API)", "targetBlank": True,
            "url": (f"{api}/api/v1/alerts?device=${{__data.fields.device:percentencode}}"
                    "&rule=${__data.fields.rule:percentencode}")}


def _links(panel: table.Panel, field_name: str, link: dict[str, Any]) -> table.Panel:
    """``link`` on every cell of the field ``field_name``."""
    return panel.override_by_name(field_name, [dm.DynamicConfigValue(id_val="links",
                                                                      value=[link])])


def _alert_table(b: Board, title: str, where: str, h: int = 8, w: int = 12) -> table.Panel:
    """Alerts currently firing (last transition in range is firing)."""
    panel = (_table(title, h, w)
             .with_target(b.q(title, "A", _alerts_query(where),
                              ("firing", "value", "device", "rule", "severity"), "table"))
             .with_transformation(_filter_value("firing", 1))
             .override_by_name("severity", [dm.DynamicConfigValue(
                 id_val="mappings", value=_severity_mappings())]))
    return _links(panel, "rule", alert_link(b.target))


def _events_table(b: Board, title: str, where: str, h: int = 8, w: int = 12) -> table.Panel:
    """Alert transitions (device events, rule alerts) as a log."""
    query = (f'SELECT "state", "value", "alert_id" FROM "{M_ALERT}" '
             f'WHERE $timeFilter AND {where} GROUP BY "device", "rule", "severity"')
    panel = (_table(title, h, w).sort_by([cb.TableSortByFieldState().display_name("Time")
                                          .desc(True)])
             .with_target(b.q(title, "A", query, ("state", "value", "device", "rule",
                                                  "severity"), "table")))
    return _links(panel, "rule", alert_link(b.target))


CASE_CHANGES = (f'SELECT count("case_id") AS "changes" FROM "{M_CASE}" WHERE $timeFilter '
                'AND "grid" =~ /^$grid$/ AND "type" =~ /^$type$/ '
                'GROUP BY time($__interval), "state" fill(none)')


def alerts_fired_query(key: str) -> str:
    """Alerts fired per interval, by a tag (type or grid)."""
    return (f'SELECT count("firing") AS "alerts" FROM "{M_ALERT}" WHERE $timeFilter AND '
            f'"firing" = 1 AND {F_TYPED} GROUP BY time($__interval), "{key}" fill(none)')


# Alerts open now, whenever they fired: each (device, rule)'s last transition up to the
# end of the range is a firing one; one row per device and severity.
OPEN_ALERTS_BY_DEVICE = (
    'SELECT max("firing") AS "firing" FROM (SELECT last("firing") AS "firing" FROM '
    f'"{M_ALERT}" WHERE {UNTIL_TO} AND {F_TYPED} GROUP BY "device", "rule", "severity") '
    'WHERE "firing" = 1 GROUP BY "device", "severity"')
CASES_RAW = ('SELECT "case_id", "state", "overdue", "severity", "grid", "unit", "action" '
             f'FROM "{M_CASE}" WHERE {STATE_WINDOW} AND "grid" =~ /^$grid$/ '
             'AND "type" =~ /^$type$/')
CASE_COLUMNS = ("case_id", "state", "overdue", "severity", "grid", "unit", "action")
KPIS = (("disposal_rate", "处置率 disposal rate"), ("on_time_rate", "按期处置率 on-time rate"),
        ("close_rate", "结案率 close rate"), ("rework_rate", "返工率 rework rate"))


NOISY_RULES = (f'SELECT count("firing") AS "alerts" FROM "{M_ALERT}" WHERE $timeFilter '
               'AND "firing" = 1 GROUP BY "rule"')


def kpi_query(name: str) -> str:
    """The city-wide KPI of the latest ``lifeline_kpi`` point in range: ``last("cases")``
    (always written) selects the point and the KPI is read from that same point, so a KPI
    it leaves out (zero denominator) is empty rather than an older point's value."""
    return (f'SELECT last("cases") AS "cases", "{name}" AS "{name}" FROM "{M_KPI}" '
            "WHERE $timeFilter AND \"scope\" = 'all'")


# -------------------------------------------------------------------------------- dashboards

def overview(target: GrafanaTarget) -> Board:
    """City overview: map, active alerts, open and overdue cases, KPIs."""
    b = Board("lifeline-overview", "城市生命线 City overview", target)
    b.place_variables()
    for name, title in KPIS:
        good_high = name != "rework_rate"
        steps = ((None, "red"), (0.8, "orange"), (0.95, "green")) if good_high else (
            (None, "green"), (0.05, "orange"), (0.15, "red"))
        b.builder.with_panel(
            stat.Panel().title(title).unit("percentunit").decimals(1).height(4).span(6)
            .thresholds(_thresholds(*steps)).color_mode(cm.BigValueColorMode.BACKGROUND)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).fields(f"/^{name}$/"))
            .with_target(b.q(title, "A", kpi_query(name), (name,))))
    title = "Devices: status and active alerts"
    geo = (geomap.Panel().title(title).height(14).span(14)
           .view(geomap.MapViewConfig().id("fit").zoom(11))
           .basemap(cb.MapLayerOptions().type("default").name("base"))
           .layers([
               cb.MapLayerOptions().type("markers").name("devices (colour: online)")
               .location(cb.FrameGeometrySource().mode(cm.FrameGeometrySourceMode.COORDS)
                         .latitude("lat").longitude("lon"))
               .config({"style": {"color": {"field": "online", "fixed": "green"},
                                  "size": {"fixed": 4}}}),
               cb.MapLayerOptions().type("markers").name("active alerts (colour: severity)")
               .location(cb.FrameGeometrySource().mode(cm.FrameGeometrySourceMode.COORDS)
                         .latitude("lat").longitude("lon"))
               .config({"style": {"color": {"field": "severity", "fixed": "red"},
                                  "size": {"field": "firing", "min": 0, "max": 12,
                                           "fixed": 0}}}),
           ])
           .thresholds(_thresholds((None, "red"), (1, "green")))
           .override_by_name("severity", [dm.DynamicConfigValue(
               id_val="mappings", value=_severity_mappings())])
           # marker size 12 for a firing alert, 0 where a device has none (null)
           .override_by_name("firing", [dm.DynamicConfigValue(id_val="min", value=0),
                                        dm.DynamicConfigValue(id_val="max", value=1)])
           .with_target(b.q(title, "A", (
               f'SELECT last("lat") AS "lat", last("lon") AS "lon" FROM "{INFO}" '
               f'WHERE {UNTIL_TO} AND {F_TYPED} GROUP BY "device", "type", "grid"'),
               ("lat", "lon", "device", "type", "grid"), "table"))
           .with_target(b.q(title, "B", (
               f'SELECT last("online") AS "online" FROM "{M_STATUS}" '
               f'WHERE {UNTIL_TO} AND {F_TYPED} GROUP BY "device"'), ("online", "device"),
               "table"))
           .with_target(b.q(title, "C", OPEN_ALERTS_BY_DEVICE,
                            ("firing", "device", "severity"), "table"))
           .with_transformation(_transform("joinByField", {"byField": "device",
                                                           "mode": "outer"})))
    b.builder.with_panel(geo)
    b.builder.with_panel(_alert_table(b, "Active alerts", F_TYPED, h=14, w=10))
    title = "Open cases by state"
    b.builder.with_panel(
        bargauge.Panel().title(title).height(8).span(12)
        .with_target(b.q(title, "A", CASES_RAW, CASE_COLUMNS, "table"))
        .with_transformation(_last_by("case_id", ("state", "overdue")))
        .with_transformation(_transform("filterByValue", {
            "type": "exclude", "match": "any",
            "filters": [{"fieldName": "state (last)",
                         "config": {"id": "regex", "options": {"value": "closed|cancelled"}}}]}))
        .with_transformation(_transform("groupBy", {"fields": {
            "state (last)": {"operation": "groupby", "aggregations": []},
            "case_id": {"operation": "aggregate", "aggregations": ["count"]}}})))
    title = "Open cases (case id: link to the case)"
    b.builder.with_panel(_links(
        _table(title, w=12).with_target(b.q(title, "A", CASES_RAW, CASE_COLUMNS, "table"))
        .with_transformation(_last_by("case_id", ("state", "overdue", "severity", "grid",
                                                  "unit")))
        .with_transformation(_transform("filterByValue", {
            "type": "exclude", "match": "any",
            "filters": [{"fieldName": "state (last)",
                         "config": {"id": "regex", "options": {"value": "closed|cancelled"}}}]})),
        "case_id", case_link(target)))
    title = "Overdue cases (超期)"
    b.builder.with_panel(_links(
        _table(title).with_target(b.q(title, "A", CASES_RAW, CASE_COLUMNS, "table"))
        .with_transformation(_last_by("case_id", ("state", "overdue", "severity", "grid",
                                                  "unit")))
        .with_transformation(_filter_value("overdue (last)", 1)), "case_id", case_link(target)))
    for key, label in (("type", "device type"), ("grid", "grid")):
        title = f"Alerts fired by {label}"
        b.builder.with_panel(
            _ts(title, "short").draw_style(cm.GraphDrawStyle.BARS)
            .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
            .with_target(b.q(title, "A", alerts_fired_query(key), ("alerts", key),
                             alias=f"$tag_{key}")))
    title = "Case changes by state (reported = opened, closed = closed)"
    b.builder.with_panel(_ts(title, "short").draw_style(cm.GraphDrawStyle.BARS).with_target(
        b.q(title, "A", CASE_CHANGES, ("changes", "state"), alias="$tag_state")))
    b.annotations()
    return b


def gas(target: GrafanaTarget) -> Board:
    """Gas: %LEL with the GB/T 50493-2019 levels, alarms, top devices."""
    b = Board("lifeline-gas", "燃气 Gas", target)
    b.place_variables(device_types=b.types_like("gas_"))
    title = "Combustible gas %LEL per alarm"
    b.builder.with_panel(_limit_lines(
        _ts(title, "percent", w=16).with_target(b.q(title, "A", (
            'SELECT max("lel") FROM "gas_alarm" WHERE $timeFilter AND ' + F_DEV +
            ' GROUP BY time($__interval), "device" fill(none)'), ("max", "device"),
            alias="$tag_device")),
        (GAS_LEVELS[0], "orange"), (GAS_LEVELS[1], "red")))
    title = "Top devices by max %LEL"
    b.builder.with_panel(
        _table(title, w=8).with_target(b.q(title, "A", (
            'SELECT top("max_lel", "device", 10) AS "max_lel" FROM (SELECT max("lel") AS '
            '"max_lel" FROM "gas_alarm" WHERE $timeFilter AND ' + F_DEV + ' GROUP BY "device")'),
            ("max_lel", "device"), "table"))
        .sort_by([cb.TableSortByFieldState().display_name("max_lel").desc(True)]))
    title = "Device alarm events (报警器自身报警)"
    b.builder.with_panel(_events_table(
        b, title, '"type" =~ /^gas_/ AND "rule" =~ /^event:/ AND "grid" =~ /^$grid$/ '
        'AND "device" =~ /^$device$/', w=12))
    b.builder.with_panel(_alert_table(
        b, "Active gas alerts", '"type" =~ /^gas_/ AND "grid" =~ /^$grid$/ '
        'AND "device" =~ /^$device$/'))
    title = "Valve-well methane (ppm)"
    b.builder.with_panel(_ts(title, "ppm").with_target(b.q(title, "A", (
        'SELECT max("ch4_ppm") FROM "gas_pipeline" WHERE $timeFilter AND ' + F_DEV +
        ' GROUP BY time($__interval), "device" fill(none)'), ("max", "device"),
        alias="$tag_device")))
    title = "CO ppm per alarm"
    b.builder.with_panel(_ts(title, "ppm").with_target(b.q(title, "A", (
        'SELECT max("co_ppm") FROM "gas_alarm" WHERE $timeFilter AND ' + F_DEV +
        ' GROUP BY time($__interval), "device" fill(none)'), ("max", "device"),
        alias="$tag_device")))
    b.annotations(' AND "type" =~ /^gas_/', ' AND "type" =~ /^gas_/')
    return b


def water(target: GrafanaTarget) -> Board:
    """Water supply: pressure and flow by zone, minimum night flow, burst alerts."""
    b = Board("lifeline-water", "供水 Water supply", target)
    b.place_variables(device_types=b.types_like("water_"), dma=True)
    where = '"grid" =~ /^$grid$/ AND "device" =~ /^$device$/'
    title = "Pressure by zone (grid)"
    b.builder.with_panel(_limit_lines(
        _ts(title, "suffix: MPa").with_target(b.q(title, "A", (
            f'SELECT mean("pressure") FROM "water_pressure" WHERE $timeFilter AND {where} '
            'GROUP BY time($__interval), "grid" fill(none)'), ("mean", "grid"),
            alias="$tag_grid")),
        (WATER_PRESSURE_LOW, "red")))
    title = "Flow by zone (grid, m³/h)"
    b.builder.with_panel(_ts(title, "suffix: m³/h").with_target(b.q(title, "A", (
        'SELECT sum("flow") AS "flow" FROM (SELECT mean("flow") AS "flow" FROM "water_flow" '
        f'WHERE $timeFilter AND {where} GROUP BY time($__interval), "device", "grid") '
        'WHERE $timeFilter GROUP BY time($__interval), "grid" fill(none)'), ("flow", "grid"),
        alias="$tag_grid")))
    title = "Minimum night flow per zone (daily minimum of hourly flow)"
    b.builder.with_panel(_ts(title, "suffix: m³/h").with_target(b.q(title, "A", (
        'SELECT min("flow") AS "mnf" FROM (SELECT sum("flow") AS "flow" FROM '
        '(SELECT mean("flow") AS "flow" FROM "water_flow" WHERE $timeFilter AND '
        f'{where} GROUP BY time(1h), "device", "grid") WHERE $timeFilter '
        'GROUP BY time(1h), "grid") WHERE $timeFilter GROUP BY time(1d), "grid" fill(none) '
        f"tz('{target.timezone}')"), ("mnf", "grid"), alias="$tag_grid"))
        .draw_style(cm.GraphDrawStyle.BARS))
    b.builder.with_panel(_alert_table(
        b, "Burst and leak alerts (active)", '"type" =~ /^water_/ AND "rule" =~ /^water-/ '
        f"AND {where}"))
    b.builder.with_panel(_events_table(
        b, "Water alert log", f'"type" =~ /^water_/ AND {where}', w=12))
    title = "Water quality: turbidity (NTU) and free chlorine (mg/L)"
    b.builder.with_panel(_ts(title, "none").with_target(b.q(title, "A", (
        'SELECT mean("turbidity") AS "turbidity", mean("chlorine") AS "chlorine" FROM '
        f'"water_quality" WHERE $timeFilter AND {where} GROUP BY time($__interval), '
        '"device" fill(none)'), ("turbidity", "chlorine", "device"),
        alias="$tag_device $col")))
    b.annotations(' AND "type" =~ /^water_/', ' AND "type" =~ /^water_/')
    return b


def drainage(target: GrafanaTarget) -> Board:
    """Drainage and pipe network: levels, manhole covers, heat pipes."""
    b = Board("lifeline-drainage", "排水与管网 Drainage and pipe network", target)
    b.place_variables(device_types=b.types_like("drain_", "manhole_", "heat_"))
    title = "Drain levels (m) with warning lines"
    b.builder.with_panel(_limit_lines(
        _ts(title, "lengthm", w=16).with_target(b.q(title, "A", (
            'SELECT max("level") FROM "drain_level" WHERE $timeFilter AND ' + F_DEV +
            ' GROUP BY time($__interval), "device" fill(none)'), ("max", "device"),
            alias="$tag_device")),
        (DRAIN_LEVELS[0], "orange"), (DRAIN_LEVELS[1], "red")))
    b.builder.with_panel(_alert_table(
        b, "Active drainage alerts", '"type" = \'drain_level\' AND "grid" =~ /^$grid$/ '
        'AND "device" =~ /^$device$/', w=8))
    title = "Manhole cover tilt (°)"
    b.builder.with_panel(_limit_lines(
        _ts(title, "suffix:°").with_target(b.q(title, "A", (
            'SELECT max("tilt") FROM "manhole_cover" WHERE $timeFilter AND ' + F_DEV +
            ' GROUP BY time($__interval), "device" fill(none)'), ("max", "device"),
            alias="$tag_device")),
        (MANHOLE_TILT, "red")))
    b.builder.with_panel(_events_table(
        b, "Manhole cover events (井盖)", '"type" = \'manhole_cover\' AND "grid" =~ /^$grid$/ '
        'AND "device" =~ /^$device$/'))
    title = "Heat pipes: supply and return temperature (°C)"
    b.builder.with_panel(_limit_lines(
        _ts(title, "celsius", w=16).with_target(b.q(title, "A", (
            'SELECT mean("supply_temp") AS "supply", mean("return_temp") AS "return" FROM '
            '"heat_pipe" WHERE $timeFilter AND ' + F_DEV + ' GROUP BY time($__interval), '
            '"device" fill(none)'), ("supply", "return", "device"),
            alias="$tag_device $col")),
        (HEAT_SUPPLY_HIGH, "red")))
    title = "Heat pipe pressure (MPa)"
    b.builder.with_panel(_ts(title, "suffix: MPa", w=8).with_target(b.q(title, "A", (
        'SELECT mean("pressure") FROM "heat_pipe" WHERE $timeFilter AND ' + F_DEV +
        ' GROUP BY time($__interval), "device" fill(none)'), ("mean", "device"),
        alias="$tag_device")))
    b.annotations(' AND "type" =~ /^(drain_level|manhole_cover|heat_pipe)$/',
                  ' AND "type" =~ /^(drain_level|manhole_cover|heat_pipe)$/')
    return b


LAST_STATUS = (f'SELECT last("online") AS "online" FROM "{M_STATUS}" '
               f'WHERE {UNTIL_TO} AND {F_TYPED} GROUP BY "device"')


def devices(target: GrafanaTarget) -> Board:
    """Device health: online/offline, battery, signal, last seen, dead letters."""
    b = Board("lifeline-devices", "设备健康 Device health", target)
    b.place_variables()
    for title, ref, query, column, colour in (
            ("Devices online", "A", f'SELECT sum("online") AS "online" FROM ({LAST_STATUS})',
             "online", "green"),
            ("Devices offline", "A", 'SELECT count("online") - sum("online") AS "offline" '
             f"FROM ({LAST_STATUS})", "offline", "red")):
        b.builder.with_panel(
            stat.Panel().title(title).height(4).span(6).color_mode(cm.BigValueColorMode.VALUE)
            .thresholds(_thresholds((None, colour)))
            .with_target(b.q(title, ref, query, (column,))))
    title = "Dead letters by reason (since service start)"
    b.builder.with_panel(
        bargauge.Panel().title(title).height(4).span(12)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .with_target(b.q(title, "A", (
            f'SELECT last(/^dead_/) FROM "{M_INGEST}" WHERE $timeFilter GROUP BY "host"'),
            ("last_dead_lettered", "host"))))
    title = "Devices online over time"
    b.builder.with_panel(_ts(title, "none").with_target(b.q(title, "A", (
        'SELECT sum("online") AS "online" FROM (SELECT last("online") AS "online" FROM '
        f'"{M_STATUS}" WHERE $timeFilter AND {F_TYPED} '
        'GROUP BY time($__interval), "device" fill(previous)) WHERE $timeFilter '
        'GROUP BY time($__interval) fill(previous)'), ("online",))))
    title = "Status changes per device (timeline)"
    b.builder.with_panel(
        statetimeline.Panel().title(title).height(8).span(12)
        .mappings([dm.ValueMap(options={"0": dm.ValueMappingResult(color="red", text="offline"),
                                        "1": dm.ValueMappingResult(color="green",
                                                                   text="online")})])
        .with_target(b.q(title, "A", (
            f'SELECT last("online") AS "online" FROM "{M_STATUS}" WHERE $timeFilter '
            f'AND {F_TYPED} GROUP BY time($__interval), "device" fill(previous)'),
            ("online", "device"), alias="$tag_device")))
    title = "Offline devices"
    b.builder.with_panel(
        _table(title).with_target(b.q(title, "A", (
            f'SELECT last("online") AS "online" FROM "{M_STATUS}" '
            f'WHERE {UNTIL_TO} AND {F_TYPED} GROUP BY "device", "type", "grid"'),
            ("time", "online", "device", "type", "grid"), "table"))
        .with_target(b.q(title, "B", (
            f'SELECT last("reason") AS "reason" FROM "{M_STATUS}" '
            f'WHERE {UNTIL_TO} AND {F_TYPED} GROUP BY "device"'), ("reason", "device"),
            "table"))
        .with_transformation(_transform("joinByField", {"byField": "device", "mode": "outer"}))
        .with_transformation(_filter_value("online", 0)))
    title = "Battery, signal and last seen"
    b.builder.with_panel(
        _table(title).with_target(b.q(title, "A", (
            'SELECT last("battery") AS "battery" FROM /^$type$/ WHERE $timeFilter AND '
            f'{F_DEV} GROUP BY "device"'), ("time", "battery", "device"), "table"))
        .with_target(b.q(title, "B", (
            'SELECT last("rssi") AS "rssi" FROM /^$type$/ WHERE $timeFilter AND '
            f'{F_DEV} GROUP BY "device"'), ("rssi", "device"), "table"))
        .with_transformation(_transform("joinByField", {"byField": "device", "mode": "outer"}))
        .with_transformation(_transform("organize", {"renameByName": {"Time 1": "last seen"}}))
        .sort_by([cb.TableSortByFieldState().display_name("battery")]))
    b.annotations(' AND "rule" = \'status:offline\'')
    return b


def service(target: GrafanaTarget) -> Board:
    """The service itself: ingest, InfluxDB writes, spool, rules, webhooks."""
    b = Board("lifeline-service", "服务 Service", target)
    b.variable("host", "service instance",
               f'SHOW TAG VALUES FROM "{M_INGEST}" WITH KEY = "host"')
    host = '"host" =~ /^$host$/'
    panels: list[tuple[str, str, str, tuple[str, ...]]] = [
        ("Ingest rate (per second)", "short", (
            'SELECT non_negative_derivative(last("received"), 1s) AS "messages", '
            'non_negative_derivative(last("stored_lines"), 1s) AS "stored_lines", '
            'non_negative_derivative(last("dead_lettered"), 1s) AS "dead_lettered" '
            f'FROM "{M_INGEST}" WHERE $timeFilter AND {host} '
            'GROUP BY time($__interval), "host" fill(none)'),
         ("messages", "stored_lines", "dead_lettered", "host")),
        ("InfluxDB write latency (s)", "s", (
            f'SELECT max("write_latency_s") AS "write_latency_s" FROM "{M_INGEST}" '
            f'WHERE $timeFilter AND {host} GROUP BY time($__interval), "host" fill(none)'),
         ("write_latency_s", "host")),
        ("Spool size (bytes) and queues", "decbytes", (
            'SELECT max("spool_bytes") AS "spool_bytes", max("writer_queue") AS '
            f'"writer_queue", max("raw_buffer") AS "raw_buffer" FROM "{M_INGEST}" '
            f'WHERE $timeFilter AND {host} GROUP BY time($__interval), "host" fill(none)'),
         ("spool_bytes", "writer_queue", "raw_buffer", "host")),
        ("Rule evaluation (values per second) and findings", "short", (
            'SELECT non_negative_derivative(last("evaluated_values"), 1s) AS "evaluated", '
            'non_negative_derivative(last("findings"), 1s) AS "findings" '
            f'FROM "{M_SERVICE}" WHERE $timeFilter AND {host} '
            'GROUP BY time($__interval), "host" fill(none)'),
         ("evaluated", "findings", "host")),
        ("Webhook deliveries and failures", "short", (
            'SELECT max("webhook_delivered") AS "delivered", '
            'max("webhook_failed_attempts") AS "failed_attempts", '
            'max("webhook_dead") AS "dead", max("webhook_pending") AS "pending" '
            f'FROM "{M_SERVICE}" WHERE $timeFilter AND {host} '
            'GROUP BY time($__interval), "host" fill(none)'),
         ("delivered", "failed_attempts", "dead", "pending", "host")),
        ("Alert transitions", "short", (
            f'SELECT count("firing") AS "transitions" FROM "{M_ALERT}" WHERE $timeFilter '
            'GROUP BY time($__interval), "severity" fill(none)'), ("transitions", "severity")),
    ]
    for title, unit, query, columns in panels:
        b.builder.with_panel(_ts(title, unit).with_target(
            b.q(title, "A", query, columns, alias="$tag_host $col")))
    title = "Noisiest rules (alerts fired)"
    b.builder.with_panel(
        _table(title).with_target(b.q(title, "A", NOISY_RULES, ("alerts", "rule"), "table"))
        .sort_by([cb.TableSortByFieldState().display_name("alerts").desc(True)]))
    b.annotations()
    return b


BOARDS: tuple[Callable[[GrafanaTarget], Board], ...] = (overview, gas, water, drainage,
                                                        devices, service)


def all_boards(target: GrafanaTarget | None = None) -> list[Board]:
    """Every dashboard, built."""
    t = target or GrafanaTarget()
    return [make(t) for make in BOARDS]
