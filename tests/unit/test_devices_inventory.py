"""Inventory files: every kind of bad row is reported with its line and reason; round trips."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.catalogue import Catalogue
from devices.errors import InventoryError
from devices.inventory import (
    COLUMNS,
    format_limits_text,
    parse_csv,
    parse_json,
    parse_limits_text,
    read_file,
    write_csv,
    write_json,
)
from devices.model import Device

CAT = Catalogue.builtin()
HEADER = ",".join(COLUMNS)
FUTURE = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()

FULL = Device(
    id="gas-1", type="gas_alarm", grid="DC-01", district="东城区", unit="燃气公司",
    name='kitchen, 3F "east"', limits={"lel": {"high": 20.0, "high_high": 40.0}},
    lat=39.9042, lon=116.4074, address="北京市东城区 1号", dma="", install_date=date(2023, 5, 1),
    tags=("household", "nb-iot"), enabled=False, interval_s=1800.0)


def row(**fields: str) -> str:
    base = {"id": "ok-1", "type": "gas_alarm"} | fields
    return ",".join(_csv_quote(base.get(c, "")) for c in COLUMNS)


def _csv_quote(value: str) -> str:
    return f'"{value}"' if any(ch in value for ch in ',"\n') else value


# (fields of the row, fragment of the reason)
BAD_ROWS = [
    ({"id": ""}, "missing id"),
    ({"id": "has space"}, "invalid device id"),
    ({"id": "a/b"}, "invalid device id"),
    ({"id": "x" * 65}, "longer than 64"),
    ({"id": ".."}, "invalid device id"),
    ({"id": "lifeline+#"}, "invalid device id"),
    ({"type": ""}, "missing type"),
    ({"type": "toaster"}, "unknown device type"),
    ({"lat": "91", "lon": "0"}, "lat: 91 outside"),
    ({"lat": "0", "lon": "-181"}, "lon: -181 outside"),
    ({"lat": "north", "lon": "1"}, "not a number"),
    ({"lat": "nan", "lon": "1"}, "outside"),
    ({"lat": "inf", "lon": "1"}, "outside"),
    ({"lat": "30"}, "together"),
    ({"install_date": "2023-13-01"}, "not a date"),
    ({"install_date": "01/05/2023"}, "not a date"),
    ({"install_date": FUTURE}, "in the future"),
    ({"install_date": "1900-01-01"}, "before 1950"),
    ({"interval": "often"}, "interval"),
    ({"interval": "0s"}, "interval"),
    ({"interval": "-5m"}, "interval"),
    ({"enabled": "maybe"}, "not true/false"),
    ({"tags": "ok;bad tag"}, "invalid tag"),
    ({"tags": ";".join(f"t{i}" for i in range(40))}, "more than 32"),
    ({"limits": "lel.high=abc"}, "not a finite number"),
    ({"limits": "lel.high"}, "metric.limit=value"),
    ({"limits": "pressure.low=1"}, "has no metric"),
    ({"limits": "lel.high=120"}, "outside the range"),
    ({"limits": "lel.high=60"}, "must not be above"),
    ({"limits": "lel.top=10"}, "unknown limit"),
    ({"name": "x" * 201}, "longer than 200"),
    ({"grid": "G\x01"}, "control characters"),
    ({"address": "a" * 501}, "longer than 500"),
]


@pytest.mark.parametrize(("fields", "reason"), BAD_ROWS)
def test_each_kind_of_bad_row_is_reported_with_line_and_reason(
        fields: dict[str, str], reason: str) -> None:
    text = "\n".join([HEADER, row(id="good-1"), row(**fields), row(id="good-2")]) + "\n"
    parsed = parse_csv(text, CAT)
    assert [d.id for d in parsed.devices] == ["good-1", "good-2"]
    assert len(parsed.problems) == 1
    problem = parsed.problems[0]
    assert problem.where == "line 3"
    assert reason in str(problem), str(problem)


def test_a_file_with_every_bad_row_reports_all_of_them(tmp_path: Path) -> None:
    lines = [HEADER] + [row(**fields) for fields, _ in BAD_ROWS] + [row(id="fine")]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    parsed = read_file(path, CAT)
    assert [d.id for d in parsed.devices] == ["fine"]
    assert [p.where for p in parsed.problems] == [f"line {i}" for i in
                                                  range(2, 2 + len(BAD_ROWS))]
    for problem, (_, reason) in zip(parsed.problems, BAD_ROWS, strict=True):
        assert reason in str(problem)


def test_one_row_reports_every_reason() -> None:
    text = HEADER + "\n" + row(id="bad id", type="toaster", lat="100", lon="0",
                              enabled="perhaps") + "\n"
    (problem,) = parse_csv(text, CAT).problems
    assert len(problem.reasons) == 4


def test_duplicates_wrong_field_counts_and_multiline_records() -> None:
    text = (HEADER + "\n" + row(id="a") + "\n" + row(id="b", name="two\nlines") + "\n"
            + row(id="a") + "\n" + row(id="c") + ",extra,fields\n\n" + row(id="d") + "\n")
    parsed = parse_csv(text, CAT)
    assert [d.id for d in parsed.devices] == ["a", "d"]
    wheres = {p.where: str(p) for p in parsed.problems}
    assert "name: contains control characters" in wheres["line 3"]
    # the record of "b" spans lines 3-4, so the duplicate "a" is on line 5
    assert "duplicate id (first on line 2)" in wheres["line 5"]
    assert "fields, header has" in wheres["line 6"]


def test_file_level_problems_raise(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="empty file"):
        parse_csv("", CAT)
    with pytest.raises(InventoryError, match="missing columns: type"):
        parse_csv("id,name\nx,y\n", CAT)
    with pytest.raises(InventoryError, match="unknown columns: colour"):
        parse_csv("id,type,colour\nx,gas_alarm,red\n", CAT)
    with pytest.raises(InventoryError, match="duplicate columns: grid"):
        parse_csv("id,type,grid,grid\nx,gas_alarm,a,b\n", CAT)
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("id,type,district\nx,gas_alarm,东城区\n".encode("gb18030"))
    with pytest.raises(InventoryError, match="gb18030"):
        read_file(gbk, CAT)
    assert read_file(gbk, CAT, encoding="gb18030").devices[0].district == "东城区"
    with pytest.raises(InventoryError, match="cannot read"):
        read_file(tmp_path / "missing.csv", CAT)
    with pytest.raises(InventoryError, match="not JSON"):
        parse_json("[{", CAT)
    with pytest.raises(InventoryError, match="expected a list"):
        parse_json('{"id": "x"}', CAT)


def test_excel_bom_trailing_separators_and_case_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffID,Type,Grid,,\r\nx-1,gas_alarm,G1,,\r\n".encode())
    (device,) = read_file(path, CAT).devices
    assert (device.id, device.grid) == ("x-1", "G1")


def test_json_items_are_validated_with_item_numbers() -> None:
    items = [
        {"id": "j-1", "type": "water_quality", "limits": {"ph": {"low": 6.0}}, "tags": ["a"],
         "enabled": False, "interval": 600, "lat": 30, "lon": 120},
        "not an object",
        {"id": "j-2", "type": "gas_alarm", "colour": "red"},
        {"id": ["list"], "type": "gas_alarm"},
        {"id": "j-3", "type": "gas_alarm", "enabled": "nope", "tags": [1, 2]},
        {"id": "j-4", "type": "gas_alarm", "limits": {"lel": 5}},
        {"id": "j-5", "type": "gas_alarm", "install_date": 20230101},
    ]
    parsed = parse_json(json.dumps({"devices": items}), CAT)
    assert [d.id for d in parsed.devices] == ["j-1"]
    assert parsed.devices[0].limits == {"ph": {"low": 6.0}}
    assert parsed.devices[0].interval_s == 600.0 and parsed.devices[0].enabled is False
    problems = {p.where: str(p) for p in parsed.problems}
    assert "must be an object" in problems["item 2"]
    assert "unknown fields colour" in problems["item 3"]
    assert "must be text" in problems["item 4"]
    assert "not true/false" in problems["item 5"] and "tags" in problems["item 5"]
    assert "limits" in problems["item 6"]
    assert "install_date" in problems["item 7"]


@pytest.mark.parametrize("writer", [write_csv, write_json])
def test_export_round_trips(writer: object) -> None:
    devices = [FULL, Device("wp-1", "water_pressure"), Device("wq-1", "water_quality",
                                                              dma="DMA-7", tags=("x",))]
    buf = io.StringIO()
    assert writer(buf, devices) == 3  # type: ignore[operator]
    parse = parse_json if writer is write_json else parse_csv
    parsed = parse(buf.getvalue(), CAT)
    assert parsed.problems == []
    assert parsed.devices == devices


def test_limits_text_round_trip() -> None:
    limits = {"lel": {"high": 20.0, "high_high": 40.0}, "co_ppm": {"high": 30.5}}
    assert parse_limits_text(format_limits_text(limits)) == limits


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(COLUMNS), _text, max_size=8), max_size=5))
def test_arbitrary_rows_never_crash(rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    import csv

    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS))
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    parsed = parse_csv(buf.getvalue(), CAT)
    assert len(parsed.devices) + len(parsed.problems) <= len(rows)
    parsed_json = parse_json(json.dumps(rows), CAT)
    assert len(parsed_json.devices) + len(parsed_json.problems) == len(rows)
