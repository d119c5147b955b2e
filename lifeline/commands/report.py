"""``lifeline report``: the shift handover report (值班交接报告) as HTML (and PDF)."""

from __future__ import annotations

import argparse
import logging
import time
from datetime import datetime
from pathlib import Path

from common.duration import parse_duration_ns
from dashboards.errors import DashboardsError
from dashboards.report import Kpi, Snapshot, write_report
from lifeline.commands.common import CommandError, settings_from
from lifeline.commands.dashboards import grafana_target, influx_client
from lifeline.db import DatabaseError
from lifeline.report_state import database_kpis, database_snapshot, report_engine
from lifeline.settings import Settings

log = logging.getLogger(__name__)

MAX_PERIOD_MS = 31 * 86_400_000
MAX_LOOKBACK_MS = 366 * 86_400_000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` command."""
    p = sub.add_parser("report", help="write the shift handover report (值班交接报告)")
    p.add_argument("--period", default="24h", help="length of the shift (default 24h)")
    p.add_argument("--end", help="end of the period, ISO 8601 (default: now)")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write")
    p.add_argument("--pdf", action="store_true", help="also write a PDF next to the HTML")
    p.add_argument("--snapshot", choices=("auto", "database", "influxdb"), default="auto",
                   help="where the state at the end of the period comes from: the service "
                        "database (auto: when there is one) or InfluxDB's state rows")
    p.add_argument("--lookback", default="30d",
                   help="with --snapshot influxdb: how far back state rows are read "
                        "(default 30d)")
    p.set_defaults(func=report_command)


def _duration_ms(option: str, text: str) -> int:
    try:
        return parse_duration_ns(text) // 1_000_000
    except ValueError as exc:
        raise CommandError(f"{option}: {exc}", code=2) from exc


def _from_database(settings: Settings, mode: str, end_ms: int,
                   period_ms: int) -> tuple[Snapshot | None, list[Kpi] | None]:
    """Snapshot and KPIs from the service database, or (None, None) for InfluxDB's."""
    if mode == "influxdb":
        return None, None
    try:
        engine = report_engine(settings, required=mode == "database")
        if engine is None:
            log.info("no service database: the snapshot comes from InfluxDB state rows")
            return None, None
        try:
            return (database_snapshot(engine, end_ms),
                    database_kpis(engine, end_ms, period_ms))
        finally:
            engine.dispose()
    except DatabaseError as exc:
        raise CommandError(str(exc), code=3) from exc


def report_command(args: argparse.Namespace) -> int:
    """Collect the period's data and the state at its end, and write the report."""
    settings = settings_from(args)
    period_ms = _duration_ms("--period", args.period)
    if not 0 < period_ms <= MAX_PERIOD_MS:
        raise CommandError("--period must be positive and at most 31d", code=2)
    lookback_ms = _duration_ms("--lookback", args.lookback)
    if not 0 < lookback_ms <= MAX_LOOKBACK_MS:
        raise CommandError("--lookback must be positive and at most 366d", code=2)
    end_ms = int(time.time() * 1000)
    if args.end:
        try:
            end = datetime.fromisoformat(args.end)
        except ValueError as exc:
            raise CommandError(f"--end: not an ISO 8601 time: {args.end!r}", code=2) from exc
        if end.tzinfo is None:
            raise CommandError("--end needs a time zone offset, e.g. +08:00", code=2)
        end_ms = int(end.timestamp() * 1000)
    snapshot, kpis = _from_database(settings, args.snapshot, end_ms, period_ms)
    try:
        with influx_client(settings) as client:
            written = write_report(client, args.out, end_ms=end_ms, period_ms=period_ms,
                                   target=grafana_target(settings), pdf=args.pdf,
                                   snapshot=snapshot, kpis=kpis, lookback_ms=lookback_ms)
    except DashboardsError as exc:
        raise CommandError(str(exc), code=3) from exc
    print(written.html)
    if written.pdf is not None:
        print(written.pdf)
    return 0
