"""The InfluxDB schema: every measurement the service writes, declared once.

Writers build their lines with these declarations (:meth:`Measurement.line`), and the
dashboard queries name measurements, tags and fields through them; docs/design.md
"InfluxDB schema" is the table of :data:`MEASUREMENTS` (a test checks they agree).

The device-type measurements are a family: :data:`READING` declares the tags and the
``flags`` field, :func:`reading` one measurement per catalogue type (its metrics as
float fields), see ``devices.catalogue.Catalogue.measurements``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tsdb.lineproto import Field, FieldType, Measurement

FLOAT, INT, STRING = FieldType.FLOAT, FieldType.INT, FieldType.STRING

READING_TAGS = ("device", "grid", "district", "unit")
FLAGS = Field("flags", INT, "quality flags of the reading (written only when non-zero)")

READING = Measurement(
    "<device type>", READING_TAGS,
    (Field("*", FLOAT, "one float field per catalogue metric"), FLAGS),
    doc="one per device type: the readings (rows of one reading share its point time)",
    writer="ingest.lineproto")


def reading(device_type: str, metrics: Iterable[str]) -> Measurement:
    """The measurement of one device type: its metrics as float fields, and ``flags``."""
    return READING.named(device_type, (*(Field(m, FLOAT) for m in metrics), FLAGS))


ALERT = Measurement(
    "lifeline_alert", ("device", "rule", "severity", "grid", "type", "unit"),
    (Field("state", STRING, "firing, resolved, … or superseded (old severity's series)"),
     Field("firing", INT, "1 while firing"),
     Field("value", FLOAT),
     Field("alert_id", INT),
     Field("flapping", INT)),
    doc="one point per alert transition, at changed_ns + 1", writer="alerts.lifecycle.lines")

CASE = Measurement(
    "lifeline_case", ("severity", "state", "grid", "type", "unit"),
    (Field("case_id", INT),
     Field("action", STRING),
     Field("overdue", INT),
     Field("rework_count", INT)),
    doc="one point per case state change or escalation, at the case's stored point_ns",
    writer="alerts.cases.lines")

KPI_COUNTS = ("cases", "registered", "handled", "handled_on_time", "closed", "reworked",
              "overdue")
KPI_RATES = ("disposal_rate", "on_time_rate", "close_rate", "rework_rate")
KPI_TIMES = ("mean_dispatch_s", "mean_handle_s", "mean_close_s", "p90_dispatch_s",
             "p90_handle_s", "p90_close_s")

KPI = Measurement(
    "lifeline_kpi", ("scope", "key"),
    (*(Field(n, INT) for n in KPI_COUNTS),
     *(Field(n, FLOAT, "fraction") for n in KPI_RATES),
     *(Field(n, FLOAT, "seconds") for n in KPI_TIMES)),
    doc="case KPIs of the period ending at the point, per scope and key",
    writer="alerts.cases.kpi")

INGEST_COUNTERS = ("received", "decoded_values", "readings", "duplicates", "dead_lettered",
                   "stored_lines", "spooled_lines", "spool_replayed_lines", "rejected_lines",
                   "write_failures", "dlq_evicted", "batches")
INGEST_GAUGES = ("raw_buffer", "raw_buffer_peak", "read_holds", "writer_queue", "spool_chunks",
                 "spool_bytes", "influx_up", "mqtt_connected", "acked", "stale_acks",
                 "network_process_restarts")

INGEST = Measurement(
    "lifeline_ingest", ("host",),
    (*(Field(n, INT) for n in INGEST_COUNTERS),
     Field("dead_*", INT, "dead-lettered messages per reason"),
     Field("mqtt_session_lost_*", INT, "persistent MQTT sessions lost per reason"),
     *(Field(n, FLOAT) for n in INGEST_GAUGES),
     Field("write_latency_s", FLOAT)),
    doc="ingest self-metrics, every metrics interval", writer="ingest.metrics")

DEVICE_STATUS = Measurement(
    "lifeline_device_status", ("device", "type", "grid", "district", "unit"),
    (Field("change", STRING),
     Field("state", STRING, "link state: online, offline, …"),
     Field("online", INT),
     Field("battery_low", INT),
     Field("weak_signal", INT),
     Field("reason", STRING)),
    doc="one point per device status change", writer="lifeline.device_status")

DEVICE_INFO = Measurement(
    "lifeline_device_info", ("device", "type", "grid", "district", "unit", "dma"),
    (Field("enabled", INT),
     Field("name", STRING),
     Field("lat", FLOAT),
     Field("lon", FLOAT)),
    doc="one point per registered device (map, dashboard variables); at start-up and "
        "when the registry changes", writer="dashboards.lines")

SERVICE = Measurement(
    "lifeline_service", ("host",),
    tuple(Field(n, INT) for n in ("evaluated_values", "findings", "rules", "webhook_delivered",
                                  "webhook_failed_attempts", "webhook_dead",
                                  "webhook_via_fallback", "webhook_pending")),
    doc="rule engine and webhook counters, every metrics interval", writer="dashboards.lines")

MEASUREMENTS: tuple[Measurement, ...] = (READING, ALERT, CASE, KPI, INGEST, DEVICE_STATUS,
                                         DEVICE_INFO, SERVICE)
"""Every measurement (the device-type family as :data:`READING`)."""

BY_NAME = {m.name: m for m in MEASUREMENTS if m is not READING}
"""The fixed-name measurements by name."""


def doc_table() -> str:
    """The Markdown table of docs/design.md "InfluxDB schema"."""
    rows = ["| measurement | tags | fields (type) | written by |",
            "|---|---|---|---|"]
    for m in MEASUREMENTS:
        tags = ", ".join(f"`{t}`" for t in m.tags)
        fields = ", ".join(f"`{f.name}` ({f.type.value})" for f in m.fields)
        rows.append(f"| `{m.name}` | {tags} | {fields} | `{m.writer}` |")
    return "\n".join(rows)
