"""Inventory files (部件普查): CSV or JSON rows → validated :class:`Device` objects, and back.

Every row is checked; every bad row is reported with its line (CSV) or item
number (JSON) and all of its reasons, so one pass over a file of thousands of
rows tells the operator everything that must be fixed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TextIO

from devices.catalogue import Catalogue, check_limits, parse_duration_s
from devices.errors import InventoryError
from devices.model import Device, valid_device_id

COLUMNS: Final = ("id", "type", "name", "grid", "district", "unit", "lat", "lon", "address",
                  "dma", "install_date", "interval", "enabled", "tags", "limits")
"""Inventory columns, in export order; only ``id`` and ``type`` are required."""

REQUIRED: Final = ("id", "type")
MAX_TEXT: Final = {"name": 200, "address": 500, "grid": 64, "district": 64, "unit": 128,
                   "dma": 64}
MAX_TAGS: Final = 32
TAG_RE: Final = re.compile(r"^[\w.:-]{1,64}$")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_TRUE: Final = {"true", "1", "yes", "y", "on", "是"}
_FALSE: Final = {"false", "0", "no", "n", "off", "否"}
MAX_FILE_BYTES: Final = 64 * 1024 * 1024
# A cell starting with one of these is a formula to a spreadsheet (``=cmd|' /C calc'!A0``):
# the export prefixes such text cells with ``'`` and the import removes that one quote.
_FORMULA_START: Final = ("=", "+", "-", "@", "'")
_NUMERIC_COLUMNS: Final = {"lat", "lon", "interval"}


def csv_escape(text: str) -> str:
    """A text cell as written to CSV: formula-like text gets a leading ``'``."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_unescape(text: str) -> str:
    """The inverse of :func:`csv_escape` (also the spreadsheet convention ``'=…``)."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


@dataclass(frozen=True, slots=True)
class RowProblem:
    """Why one row was refused: ``where`` is ``line N`` (CSV) or ``item N`` (JSON)."""

    where: str
    device_id: str
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        ident = f" ({self.device_id[:64]!r})" if self.device_id else ""
        return f"{self.where}{ident}: {'; '.join(self.reasons)}"


@dataclass(slots=True)
class ParsedInventory:
    """The valid devices of a file and the problems of its bad rows."""

    devices: list[Device] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    rows: int = 0


class _Row:
    """Collects the reasons a row is bad while its fields are parsed."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def bad(self, reason: str) -> None:
        self.reasons.append(reason)


def parse_device(raw: Mapping[str, Any], catalogue: Catalogue,
                 today: date | None = None) -> tuple[Device | None, list[str]]:
    """Validate one row (strings from CSV, or JSON values); returns (device, reasons)."""
    row = _Row()
    today = today or datetime.now(UTC).date()
    unknown = [str(k)[:32] for k in raw if k not in COLUMNS]
    if unknown:
        row.bad(f"unknown fields {', '.join(sorted(unknown))}")
    device_id = _text(raw.get("id"), "id", row, 64)
    if not device_id:
        row.bad("missing id")
    elif not valid_device_id(device_id):
        row.bad(f"invalid device id {device_id[:64]!r} (letters, digits, '_', '.', '-'; "
                "at most 64)")
    type_name = _text(raw.get("type"), "type", row, 64)
    dtype = catalogue.types.get(type_name)
    if not type_name:
        row.bad("missing type")
    elif dtype is None:
        row.bad(f"unknown device type {type_name[:64]!r}")
    texts = {k: _text(raw.get(k), k, row, n) for k, n in MAX_TEXT.items()}
    lat = _number(raw.get("lat"), "lat", row, -90.0, 90.0)
    lon = _number(raw.get("lon"), "lon", row, -180.0, 180.0)
    if (lat is None) != (lon is None) and not any(r.startswith(("lat", "lon"))
                                                   for r in row.reasons):
        row.bad("lat and lon must be given together")
    install = _date(raw.get("install_date"), row, today)
    interval = _interval(raw.get("interval"), row)
    enabled = _bool(raw.get("enabled"), row)
    tags = _tags(raw.get("tags"), row)
    limits = _limits(raw.get("limits"), row, catalogue, type_name if dtype else None)
    if row.reasons:
        return None, row.reasons
    return Device(
        id=device_id, type=type_name, grid=texts["grid"], district=texts["district"],
        unit=texts["unit"], name=texts["name"], limits=limits, lat=lat, lon=lon,
        address=texts["address"], dma=texts["dma"], install_date=install, tags=tags,
        enabled=enabled, interval_s=interval,
    ), []


def _text(value: Any, name: str, row: _Row, max_len: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        row.bad(f"{name}: must be text, not {type(value).__name__}")
        return ""
    text = str(value).strip()
    if len(text) > max_len:
        row.bad(f"{name}: longer than {max_len} characters")
        return ""
    if _CONTROL_RE.search(text):
        row.bad(f"{name}: contains control characters")
        return ""
    return text


def _number(value: Any, name: str, row: _Row, low: float, high: float) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        row.bad(f"{name}: must be a number")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        row.bad(f"{name}: {str(value)[:32]!r} is not a number")
        return None
    if not math.isfinite(number) or not low <= number <= high:
        row.bad(f"{name}: {str(value)[:32]} outside [{low:g}, {high:g}]")
        return None
    return number


def _date(value: Any, row: _Row, today: date) -> date | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        row.bad("install_date: must be a date YYYY-MM-DD")
        return None
    try:
        parsed = date.fromisoformat(value.strip()[:10]) if len(value.strip()) == 10 else None
    except ValueError:
        parsed = None
    if parsed is None:
        row.bad(f"install_date: {value[:32]!r} is not a date YYYY-MM-DD")
        return None
    if parsed > today + timedelta(days=1):
        row.bad(f"install_date: {parsed} is in the future")
        return None
    if parsed.year < 1950:
        row.bad(f"install_date: {parsed} is before 1950")
        return None
    return parsed


def _interval(value: Any, row: _Row) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return parse_duration_s(value)
    except ValueError as exc:
        row.bad(f"interval: {exc}")
        return None


def _bool(value: Any, row: _Row) -> bool:
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    row.bad(f"enabled: {str(value)[:16]!r} is not true/false")
    return True


def _tags(value: Any, row: _Row) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items = [t.strip() for t in value.split(";") if t.strip()]
    elif isinstance(value, list) and all(isinstance(t, str) for t in value):
        items = [t.strip() for t in value]
    else:
        row.bad("tags: must be text separated by ';' or a list of strings")
        return ()
    bad = [t for t in items if not TAG_RE.match(t)]
    if bad:
        row.bad(f"tags: invalid tag {bad[0][:32]!r} (letters, digits, '_', '.', ':', '-')")
        return ()
    if len(items) > MAX_TAGS:
        row.bad(f"tags: more than {MAX_TAGS}")
        return ()
    return tuple(dict.fromkeys(items))


def parse_limits_text(text: str) -> dict[str, dict[str, Any]]:
    """``"lel.high=20;lel.high_high=40"`` → ``{"lel": {"high": 20.0, ...}}``."""
    result: dict[str, dict[str, Any]] = {}
    for raw_part in text.split(";"):
        part = raw_part.strip()
        if not part:
            continue
        key, sep, raw = part.partition("=")
        metric, dot, name = key.strip().partition(".")
        if not sep or not dot or not metric or not name:
            raise ValueError(f"{part[:40]!r} is not metric.limit=value")
        try:
            number: Any = float(raw)
        except ValueError:
            number = raw.strip()
        result.setdefault(metric, {})[name.strip()] = number
    return result


def format_limits_text(limits: Mapping[str, Mapping[str, float]]) -> str:
    """The CSV form of ``limits`` (read back by :func:`parse_limits_text`)."""
    return ";".join(f"{m}.{n}={v!r}" for m, values in sorted(limits.items())
                    for n, v in values.items())


def _limits(value: Any, row: _Row, catalogue: Catalogue,
            type_name: str | None) -> dict[str, dict[str, float]]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = parse_limits_text(value)
        except ValueError as exc:
            row.bad(f"limits: {exc}")
            return {}
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        row.bad("limits: must be {metric: {limit: value}}")
        return {}
    if type_name is None:
        return {}
    metrics = catalogue[type_name].metrics
    result: dict[str, dict[str, float]] = {}
    for metric, values in value.items():
        spec = metrics.get(metric)
        if spec is None:
            row.bad(f"limits: {type_name} has no metric {str(metric)[:32]!r}")
            continue
        problems = check_limits(spec, values)
        if problems:
            for p in problems:
                row.bad(f"limits: {p}")
            continue
        if values:
            result[metric] = {k: float(v) for k, v in values.items()}
    return result


def _decode(data: bytes, encoding: str, source: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InventoryError(
            f"{source}: not valid {encoding} at byte {exc.start}; a GBK/GB18030 file needs "
            "--encoding gb18030") from exc
    except LookupError as exc:
        raise InventoryError(f"unknown encoding {encoding!r}") from exc


def read_file(path: Path, catalogue: Catalogue, *, encoding: str = "utf-8-sig",
              fmt: str | None = None) -> ParsedInventory:
    """Parse an inventory file (``.csv`` or ``.json``); file-level problems raise."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InventoryError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read inventory: {exc}") from exc
    fmt = fmt or ("json" if path.suffix.lower() == ".json" else "csv")
    text = _decode(data, encoding, str(path))
    if fmt == "json":
        return parse_json(text, catalogue, source=str(path))
    return parse_csv(text, catalogue, source=str(path))


def parse_csv(text: str, catalogue: Catalogue, *, source: str = "inventory") -> ParsedInventory:
    """Parse CSV text with a header row."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration as exc:
        raise InventoryError(f"{source}: empty file (needs a header row)") from exc
    except csv.Error as exc:
        raise InventoryError(f"{source}: line 1: {exc}") from exc
    names = [h.strip().lower() for h in header]
    while names and not names[-1]:
        names.pop()  # trailing separators of spreadsheet exports
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise InventoryError(f"{source}: missing columns: {', '.join(missing)}")
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise InventoryError(f"{source}: unknown columns: {', '.join(unknown)} "
                             f"(known: {', '.join(COLUMNS)})")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InventoryError(f"{source}: duplicate columns: {', '.join(dupes)}")
    rows: list[tuple[str, dict[str, Any] | str]] = []
    line_end = reader.line_num
    while True:
        start = line_end + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows.append((f"line {start}", f"CSV syntax: {exc}"))
            break
        line_end = reader.line_num
        if not record or all(not c.strip() for c in record):
            continue
        extra = record[len(names):]
        if any(c.strip() for c in extra):
            rows.append((f"line {start}", f"{len(record)} fields, header has {len(names)}"))
            continue
        rows.append((f"line {start}", {
            name: cell if name in _NUMERIC_COLUMNS else csv_unescape(cell)
            for name, cell in zip(names, record, strict=False)}))
    return _validate(rows, catalogue)


def parse_json(text: str, catalogue: Catalogue, *, source: str = "inventory") -> ParsedInventory:
    """Parse a JSON list of device objects (or ``{"devices": [...]}``)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InventoryError(f"{source}: not JSON: {str(exc)[:200]}") from exc
    if isinstance(data, dict) and isinstance(data.get("devices"), list):
        data = data["devices"]
    if not isinstance(data, list):
        raise InventoryError(f"{source}: expected a list of devices or {{\"devices\": [...]}}")
    rows: list[tuple[str, dict[str, Any] | str]] = [
        (f"item {i}", item if isinstance(item, dict) else
         f"must be an object, not {type(item).__name__}")
        for i, item in enumerate(data, 1)
    ]
    return _validate(rows, catalogue)


def _validate(rows: list[tuple[str, dict[str, Any] | str]],
              catalogue: Catalogue) -> ParsedInventory:
    result = ParsedInventory(rows=len(rows))
    first_seen: dict[str, str] = {}
    today = datetime.now(UTC).date()
    for where, raw in rows:
        if isinstance(raw, str):
            result.problems.append(RowProblem(where, "", (raw,)))
            continue
        device, reasons = parse_device(raw, catalogue, today)
        ident = str(raw.get("id") or "").strip()
        if device is not None and device.id in first_seen:
            reasons = [f"duplicate id (first on {first_seen[device.id]})"]
            device = None
        if device is None:
            result.problems.append(RowProblem(where, ident, tuple(reasons)))
            continue
        first_seen[device.id] = where
        result.devices.append(device)
    return result


def device_row(device: Device) -> dict[str, Any]:
    """A device as a JSON-able inventory object (the JSON export and the API share it)."""
    return {
        "id": device.id, "type": device.type, "name": device.name, "grid": device.grid,
        "district": device.district, "unit": device.unit, "lat": device.lat, "lon": device.lon,
        "address": device.address, "dma": device.dma,
        "install_date": device.install_date.isoformat() if device.install_date else None,
        "interval": device.interval_s, "enabled": device.enabled, "tags": list(device.tags),
        "limits": device.limits,
    }


def write_csv(handle: TextIO, devices: Iterable[Device]) -> int:
    """Write devices as CSV (every column); returns the number of rows."""
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    for d in devices:
        e = csv_escape
        writer.writerow([
            e(d.id), e(d.type), e(d.name), e(d.grid), e(d.district), e(d.unit),
            "" if d.lat is None else repr(d.lat), "" if d.lon is None else repr(d.lon),
            e(d.address), e(d.dma), d.install_date.isoformat() if d.install_date else "",
            "" if d.interval_s is None else repr(d.interval_s),
            "true" if d.enabled else "false", e(";".join(d.tags)),
            e(format_limits_text(d.limits)),
        ])
        count += 1
    return count


def write_json(handle: TextIO, devices: Iterable[Device]) -> int:
    """Write devices as a JSON list; returns the number of objects."""
    rows = [device_row(d) for d in devices]
    json.dump(rows, handle, ensure_ascii=False, indent=1)
    handle.write("\n")
    return len(rows)
