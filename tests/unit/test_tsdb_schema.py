"""The InfluxDB schema (tsdb.schema): writers, dashboard queries and docs agree with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alerts.cases.kpi import KpiScope, kpi_lines, kpis_of
from alerts.cases.lines import case_line
from alerts.cases.model import Case, CaseState
from alerts.lifecycle.lines import alert_line, superseded_line
from alerts.lifecycle.model import Alert, AlertState
from dashboards.check import targets_of
from dashboards.definitions import all_boards
from dashboards.lines import device_info_line, service_line
from dashboards.render import to_json
from devices.catalogue import Catalogue
from devices.model import Device
from devices.series import SeriesTable
from ingest.batch import Batch
from ingest.influx import WriterStats
from ingest.lineproto import batch_lines
from ingest.metrics import IngestCounters, ingest_line
from rules.model import Severity
from tsdb import schema
from tsdb.lineproto import Field, FieldType, Measurement, SchemaError

ROOT = Path(__file__).resolve().parents[2]
TYPES = {m.name: m for m in Catalogue.builtin().measurements()}


def declared(name: str) -> Measurement:
    """The declaration of a measurement name: a fixed one or a catalogue type's."""
    found = schema.BY_NAME.get(name) or TYPES.get(name)
    assert found is not None, f"measurement {name!r} is not declared in tsdb.schema"
    return found


# --- writers ---------------------------------------------------------------------------

_LINE = re.compile(r"^((?:[^ ,\\]|\\.)+)((?:,(?:[^ \\]|\\.)+)?) "
                   r"((?:[^ \\\"]|\\.|\"(?:[^\"\\]|\\.)*\")+) (\d+)$")
_PAIR = re.compile(r'((?:[^,=\\]|\\.)+)=((?:"(?:[^"\\]|\\.)*")|(?:[^,\\]|\\.)*)')


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def _value_type(raw: str) -> FieldType:
    if raw.startswith('"'):
        return FieldType.STRING
    if raw in ("true", "false"):
        return FieldType.BOOL
    if raw.endswith("i"):
        int(raw[:-1])
        return FieldType.INT
    float(raw)
    return FieldType.FLOAT


def check_line(line: str) -> str:
    """Parse one line of line protocol and check it against its declaration; returns the
    measurement name."""
    m = _LINE.match(line)
    assert m, f"not line protocol: {line!r}"
    name, tagpart, fieldpart, _ = m.groups()
    decl = declared(_unescape(name))
    for key, value in _PAIR.findall(tagpart[1:]) if tagpart else []:
        assert _unescape(key) in decl.tags, f"{decl.name}: tag {key!r} undeclared"
        assert value, f"{decl.name}: empty tag {key!r}"
    fields = _PAIR.findall(fieldpart)
    assert fields and ",".join(f"{k}={v}" for k, v in fields) == fieldpart, line
    for key, raw in fields:
        kind = decl.field(_unescape(key)).type
        assert _value_type(raw) is kind, f"{decl.name}.{key}: {raw!r} is not {kind}"
    return decl.name


def _alert(state: AlertState = AlertState.FIRING) -> Alert:
    return Alert(id=7, fingerprint="f", device_id="gas 1", rule_id="gas-lel-high", metric="lel",
                 state=state, severity=Severity.MAJOR, value=30.0, device_type="gas_alarm",
                 grid="G,1", district="d", unit="u", first_seen_ns=1, changed_ns=2,
                 fired_ns=2, resolved_ns=None, flapping=True, suppressed="",
                 notified_state="", notified_severity="", acked_by="", acked_ns=None,
                 ack_note="", case_id=None)


def _case() -> Case:
    return Case(id=3, state=CaseState.REGISTERED, severity=Severity.CRITICAL, title="t",
                grid="G1", district="d", device_type="water_pressure", device_id="w1",
                unit="", group_key="k", external_id="", created_ns=1, updated_ns=1,
                last_alert_ns=1, registered_ns=1, dispatched_ns=None, accepted_ns=None,
                handled_ns=None, verified_ns=None, closed_ns=None, cancelled_ns=None,
                register_due_ns=None, dispatch_due_ns=None, handle_due_ns=None,
                verify_due_ns=None, overdue=True, escalated="", handled_on_time=None,
                rework_count=2, return_count=0)


def _writer_lines() -> list[str]:
    table = SeriesTable()
    lines: list[str] = []
    for m in TYPES.values():
        device = Device(f"{m.name} 1", m.name, grid="G 1", district="a=b", unit="")
        sids = [table.id_for(device, f.name) for f in m.fields if f is not schema.FLAGS]
        n = len(sids)
        batch = Batch(series=np.array(sids, dtype=np.int64),
                      ts_ns=np.arange(n, dtype=np.int64), value=np.linspace(0.5, 9.5, n),
                      flags=np.array([0, 2] * n, dtype=np.uint16)[:n])
        lines += batch_lines(batch, table)
    counters = IngestCounters(received=3, decoded=2)
    counters.dead_by_reason["not_json"] = 1
    counters.sessions_lost["taken_over"] = 1
    kpis = kpis_of([_case()], KpiScope.GRID) + kpis_of([], KpiScope.ALL)
    lines += [
        alert_line(_alert(), 3), alert_line(_alert(AlertState.RESOLVED), 4),
        superseded_line(_alert(), 5), case_line(_case(), "escalate", 6),
        *kpi_lines(kpis, 7),
        ingest_line(counters, WriterStats(lines_written=2),
                    dict.fromkeys(schema.INGEST_GAUGES, 1.0), 0, 8, "serve 1"),
        device_info_line(Device("x", "gas_alarm", dma="D", lat=1.0, lon=2.0, name='a "b"'), 9)
        or "",
        service_line("h", {"findings": 1, "webhook_pending": 2, "rules": 3}, 10),
    ]
    return lines


def test_every_line_a_writer_produces_matches_its_declaration() -> None:
    names = {check_line(line) for line in _writer_lines()}
    # every fixed measurement but device status (lifeline.device_status, same encoder;
    # covered by test_device_status_line_is_declared) and every catalogue type
    assert names == (set(schema.BY_NAME) - {schema.DEVICE_STATUS.name}) | set(TYPES)


def test_device_status_line_is_declared() -> None:
    line = schema.DEVICE_STATUS.line(
        {"device": "d 1", "type": "gas_alarm", "grid": "", "unit": "u"},
        {"change": "offline", "state": "offline", "online": 0, "battery_low": 0,
         "weak_signal": 1, "reason": 'no "data"'}, 5)
    assert check_line(line) == "lifeline_device_status"
    assert line == ('lifeline_device_status,device=d\\ 1,type=gas_alarm,unit=u change="offline",'
                    'state="offline",online=0i,battery_low=0i,weak_signal=1i,'
                    'reason="no \\"data\\"" 5')


def test_the_encoder_refuses_what_the_declaration_does_not_say() -> None:
    m = Measurement("m", ("a",), (Field("x", FieldType.INT), Field("p_*", FieldType.FLOAT),
                                  Field("b", FieldType.BOOL)))
    line = m.line({"a": "1"}, {"x": True, "p_q": 2, "b": False}, 3)
    assert line == "m,a=1 x=1i,p_q=2.0,b=false 3"
    with pytest.raises(SchemaError, match="tag 'z'"):
        m.line({"z": "1"}, {"x": 1}, 1)
    with pytest.raises(SchemaError, match="field 'y'"):
        m.line({}, {"y": 1}, 1)
    with pytest.raises(SchemaError, match="not a integer"):
        m.line({}, {"x": 1.5}, 1)
    with pytest.raises(SchemaError, match="not a float"):
        m.line({}, {"p_q": "s"}, 1)
    with pytest.raises(SchemaError, match="at least one field"):
        m.line({"a": "1"}, {"x": None}, 1)
    with pytest.raises(SchemaError, match="field 'y'"):
        m.prefix({"a": "1"}, "y")


def test_kpi_fields_are_the_kpi_dataclass_fields() -> None:
    from dataclasses import fields

    from alerts.cases.kpi import Kpi
    names = [f.name for f in fields(Kpi) if f.name not in ("scope", "key")]
    assert names == [f.name for f in schema.KPI.fields]


# --- dashboard queries -----------------------------------------------------------------

_INNER = re.compile(r'SELECT ((?:(?!SELECT).)*?) FROM ("[^"]+"|/[^/]+/)((?:(?!SELECT).)*)')
_SHOW = re.compile(r'SHOW TAG VALUES FROM "([^"]+)" WITH KEY = "([^"]+)"((?:(?!SELECT).)*)')
_IDENT = re.compile(r'"([^"]+)"')
_ALIAS = re.compile(r'\s+AS\s+"[^"]+"')


def _queries() -> list[str]:
    out: list[str] = []
    for board in all_boards():
        doc: dict[str, Any] = to_json(board)
        out += [t.query for t in targets_of(doc)]
        for v in doc.get("templating", {}).get("list", []):
            q = v.get("query")
            if isinstance(q, dict):
                q = q.get("query")
            if v.get("type") == "query" and q:
                out.append(str(q))
    return out


def _from(source: str) -> list[Measurement]:
    if source.startswith('"'):
        return [declared(source[1:-1])]
    pattern = re.compile(source[1:-1].replace("$type", ".*"))
    matched = [m for name, m in TYPES.items() if pattern.fullmatch(name)]
    assert matched, f"FROM {source} matches no declared measurement"
    return matched


def _names(m: Measurement, ident: str) -> bool:
    # a device-type measurement's fields are its catalogue metrics, not READING's "*"
    return ident in m.tags or ident == "time" or (m.has_field(ident)
                                                  and m.field(ident).name != "*")


def test_every_dashboard_query_reads_declared_measurements_tags_and_fields() -> None:
    queries = _queries()
    assert len(queries) > 50
    sources: set[str] = set()
    for q in queries:
        shows = _SHOW.findall(q)
        selects = _INNER.findall(q)
        assert shows or selects, f"no FROM understood in {q!r}"
        for name, key, where in shows:
            m = declared(name)
            sources.add(m.name)
            for ident in [key, *_IDENT.findall(where)]:
                assert ident in m.tags, f"{q!r}: {ident!r} is not a tag of {name}"
        for columns, source, tail in selects:
            ms = _from(source)
            sources.update(m.name for m in ms)
            for ident in _IDENT.findall(_ALIAS.sub("", columns)) + _IDENT.findall(tail):
                assert any(_names(m, ident) for m in ms), (
                    f"{q!r}: {ident!r} is neither a tag nor a field of {source}")
    # the boards read every fixed measurement
    assert set(schema.BY_NAME) <= sources


# --- docs ------------------------------------------------------------------------------

def test_design_doc_schema_table_is_the_schema() -> None:
    text = (ROOT / "docs" / "design.md").read_text("utf-8")
    assert schema.doc_table() in text, (
        "docs/design.md 'InfluxDB schema' differs from tsdb.schema: paste "
        "`python -c 'from tsdb.schema import doc_table; print(doc_table())'`")


def test_tsdb_imports_nothing_of_the_project() -> None:
    """The lowest layer: every package may import tsdb, so it imports none of them."""
    import ast
    import sys

    for path in sorted((ROOT / "tsdb").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top == "tsdb" or top in sys.stdlib_module_names or top == "__future__", (
                    f"{path.name} imports {name}")
