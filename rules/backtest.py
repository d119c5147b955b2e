"""Backtest: evaluate rule files over CSV files with the service's own engine.

Each CSV is one device named after the file stem. The time column (default: the
first) holds ISO 8601 / ``YYYY-MM-DD HH:MM:SS`` (naive times are wall-clock in
``timezone``) or epoch seconds / milliseconds / microseconds / nanoseconds; every
other column whose non-empty cells are all numbers is a metric named after its
header. Empty cells are missing readings. Rows of every file are merged in time
order and fed to :class:`rules.engine.RuleEngine` in batches; a final tick at the
last timestamp lets ``stale`` rules see devices whose data ends early.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
import zoneinfo
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devices.model import Device
from devices.series import SeriesTable
from rules.engine import RuleEngine
from rules.errors import BacktestError
from rules.model import Finding, Rule

BATCH_ROWS = 50_000
MAX_COLUMNS = 1000
csv.field_size_limit(1_000_000)


@dataclass(frozen=True, slots=True)
class Series:
    """One metric column of one CSV file."""

    device: str
    metric: str
    ts_ns: np.ndarray
    value: np.ndarray


@dataclass(frozen=True, slots=True)
class BacktestResult:
    """Findings plus what was read."""

    findings: list[Finding]
    readings: int
    late: int
    skipped_columns: list[str]


def parse_time(text: str, tz: dt.tzinfo) -> int:
    """One timestamp cell → ns since the epoch; raises ValueError."""
    s = text.strip()
    if not s:
        raise ValueError("empty timestamp")
    try:
        number = float(s)
    except ValueError:
        number = math.nan
    if math.isfinite(number):
        a = abs(number)
        scale = 1e9 if a < 1e11 else 1e6 if a < 1e14 else 1e3 if a < 1e17 else 1.0
        return round(number * scale)
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    if len(s) >= 10 and s[4] == "/" and s[7] == "/":
        s = s[:4] + "-" + s[5:7] + "-" + s[8:]
    stamp = dt.datetime.fromisoformat(s)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=tz)
    return int(stamp.timestamp()) * 1_000_000_000 + stamp.microsecond * 1000


def read_csv(path: Path, *, time_column: str | None = None, sep: str = ",",
             timezone: str = "UTC") -> tuple[list[Series], list[str]]:
    """The metric columns of one CSV file, and the columns skipped as not numeric."""
    tz = zoneinfo.ZoneInfo(timezone)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=sep)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise BacktestError(f"{path}: empty file or no header line")
            header = [h.strip() for h in header]
            if len(header) > MAX_COLUMNS:
                raise BacktestError(f"{path}: more than {MAX_COLUMNS} columns")
            if time_column is None:
                tcol = 0
            elif time_column in header:
                tcol = header.index(time_column)
            else:
                raise BacktestError(f"{path}: no time column {time_column!r} "
                                    f"(columns: {', '.join(header)[:200]})")
            if len(header) < 2:
                raise BacktestError(f"{path}: need a time column and at least one metric")
            lines: list[int] = []
            cells: list[list[str]] = [[] for _ in header]
            for line, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise BacktestError(f"{path}:{line}: {len(row)} fields, header has "
                                        f"{len(header)} (wrong --sep?)")
                lines.append(line)
                for i, c in enumerate(row):
                    cells[i].append(c)
            times = _times(path, cells[tcol], lines, tz, timezone)
    except OSError as exc:
        raise BacktestError(f"{path}: cannot read: {exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BacktestError(f"{path}: not a readable CSV file: {exc}") from exc
    ts = np.array(times, dtype=np.int64)
    out: list[Series] = []
    skipped: list[str] = []
    for i, name in enumerate(header):
        if i == tcol:
            continue
        values = _numeric(cells[i])
        if values is None or not name:
            skipped.append(f"{path.name}:{name or f'#{i + 1}'}")
            continue
        keep = ~np.isnan(values)
        out.append(Series(path.stem, name, ts[keep], values[keep]))
    return out, skipped


_NAIVE_ISO = re.compile(r"\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d{1,9})?)?)?")


def _times(path: Path, column: list[str], lines: list[int], tz: dt.tzinfo,
           timezone: str) -> list[int]:
    """Parse the time column; naive ISO text in UTC takes a vectorised fast path."""
    if timezone == "UTC" and column and all(_NAIVE_ISO.fullmatch(c) for c in column):
        try:
            stamps = np.array([c.replace(" ", "T") for c in column], dtype="datetime64[ns]")
        except ValueError:
            pass  # e.g. 2026-02-30: the loop below names the line
        else:
            out: list[int] = stamps.astype(np.int64).tolist()
            return out
    times: list[int] = []
    for cell, line in zip(column, lines, strict=True):
        try:
            times.append(parse_time(cell, tz))
        except (ValueError, OverflowError) as exc:
            raise BacktestError(f"{path}:{line}: bad timestamp {cell[:40]!r}: {exc}") from exc
    return times


def _numeric(column: list[str]) -> np.ndarray | None:
    try:  # fast path: every cell a number
        fast = np.asarray(column, dtype=np.float64)
    except ValueError:
        pass
    else:
        fast[~np.isfinite(fast)] = np.nan
        return fast
    values = np.full(len(column), np.nan)
    for i, cell in enumerate(column):
        c = cell.strip()
        if not c or c.lower() in ("nan", "na", "null", "none"):
            continue
        try:
            v = float(c)
        except ValueError:
            return None
        values[i] = v if math.isfinite(v) else np.nan
    return values


def run_backtest(rules: Sequence[Rule], files: Sequence[Path], *, time_column: str | None = None,
                 sep: str = ",", device_type: str = "", timezone: str = "UTC") -> BacktestResult:
    """Evaluate ``rules`` over ``files``; returns every transition in time order."""
    table = SeriesTable()
    sids, tss, vals = [], [], []
    skipped: list[str] = []
    stems: set[str] = set()
    for path in files:
        if path.stem in stems:
            raise BacktestError(f"{path}: two files for device {path.stem!r}")
        stems.add(path.stem)
        columns, skip = read_csv(path, time_column=time_column, sep=sep, timezone=timezone)
        skipped += skip
        device = Device(path.stem, device_type)
        for col in columns:
            sid = table.id_for(device, col.metric)
            sids.append(np.full(col.ts_ns.shape[0], sid, dtype=np.int64))
            tss.append(col.ts_ns)
            vals.append(col.value)
    engine = RuleEngine(rules, table, timezone=timezone)
    if not sids:
        return BacktestResult([], 0, 0, skipped)
    s, t, v = np.concatenate(sids), np.concatenate(tss), np.concatenate(vals)
    order = np.argsort(t, kind="stable")
    s, t, v = s[order], t[order], v[order]
    findings: list[Finding] = []
    for chunk in _chunks(s.shape[0]):
        findings += engine.evaluate(_Cols(s[chunk], t[chunk], v[chunk]))
    findings += engine.tick(int(t.max()))
    return BacktestResult(findings, int(s.shape[0]), engine.late, skipped)


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, BATCH_ROWS):
        yield slice(start, min(n, start + BATCH_ROWS))


@dataclass(frozen=True, slots=True)
class _Cols:
    series: np.ndarray
    ts_ns: np.ndarray
    value: np.ndarray


def iso(ts_ns: int, timezone: str) -> str:
    """ISO 8601 text of a timestamp in ``timezone``."""
    stamp = dt.datetime.fromtimestamp(ts_ns // 1_000_000_000, zoneinfo.ZoneInfo(timezone))
    stamp = stamp.replace(microsecond=(ts_ns % 1_000_000_000) // 1000)
    return stamp.isoformat()
