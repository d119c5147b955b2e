"""``lifeline report``: the shift handover report (值班交接报告) as HTML (and PDF)."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from dashboards.errors import DashboardsError
from dashboards.report import write_report
from lifeline.commands.common import CommandError, settings_from
from lifeline.commands.dashboards import grafana_target, influx_client
from rules.model import parse_duration_ns

MAX_PERIOD_MS = 31 * 86_400_000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` command."""
    p = sub.add_parser("report", help="write the shift handover report (值班交接报告)")
    p.add_argument("--period", default="24h", help="length of the shift (default 24h)")
    p.add_argument("--end", help="end of the period, ISO 8601 (default: now)")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write")
    p.add_argument("--pdf", action="store_true", help="also write a PDF next to the HTML")
    p.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    """Collect the period's data from InfluxDB and write the report."""
    settings = settings_from(args)
    try:
        period_ms = parse_duration_ns(args.period) // 1_000_000
    except ValueError as exc:
        raise CommandError(f"--period: {exc}", code=2) from exc
    if not 0 < period_ms <= MAX_PERIOD_MS:
        raise CommandError("--period must be positive and at most 31d", code=2)
    end_ms = int(time.time() * 1000)
    if args.end:
        try:
            end = datetime.fromisoformat(args.end)
        except ValueError as exc:
            raise CommandError(f"--end: not an ISO 8601 time: {args.end!r}", code=2) from exc
        if end.tzinfo is None:
            raise CommandError("--end needs a time zone offset, e.g. +08:00", code=2)
        end_ms = int(end.timestamp() * 1000)
    try:
        with influx_client(settings) as client:
            written = write_report(client, args.out, end_ms=end_ms, period_ms=period_ms,
                                   target=grafana_target(settings), pdf=args.pdf)
    except DashboardsError as exc:
        raise CommandError(str(exc), code=3) from exc
    print(written.html)
    if written.pdf is not None:
        print(written.pdf)
    return 0
