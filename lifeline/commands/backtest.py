"""``lifeline backtest RULES CSV [CSV ...]``: rule files over CSV files, no service needed."""

from __future__ import annotations

import argparse
import math
import zoneinfo
from pathlib import Path

import orjson

from lifeline.commands.common import CommandError, err
from rules.backtest import iso, run_backtest
from rules.errors import RulesError
from rules.loader import load_rules


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``backtest`` command."""
    p = sub.add_parser(
        "backtest", help="evaluate rule files over CSV files (one device per file)",
        description="Each CSV is one device named after the file stem; the time column "
        "(default: the first) is ISO 8601, 'YYYY-MM-DD HH:MM:SS' or epoch s/ms; every other "
        "numeric column is a metric named after its header. Uses the service's rule engine.")
    p.add_argument("rules", type=Path, help="a rule file or a directory of *.toml rule files")
    p.add_argument("csv", type=Path, nargs="+", help="CSV files, one device each")
    p.add_argument("--time-column", help="name of the time column (default: the first)")
    p.add_argument("--sep", default=",", help="field separator (default ','; use '\\t' for tab)")
    p.add_argument("--device-type", default="",
                   help="device type of every file (rules with device_types match it)")
    p.add_argument("--timezone", default="UTC",
                   help="zone of naive timestamps and of mnf night windows (default UTC)")
    p.add_argument("--json", action="store_true", help="one JSON object per transition")
    p.set_defaults(func=backtest_command)


def backtest_command(args: argparse.Namespace) -> int:
    """Run the backtest and print the transitions."""
    sep = "\t" if args.sep in ("\\t", "tab") else args.sep
    if len(sep) != 1:
        raise CommandError("--sep must be one character", code=2)
    try:
        zoneinfo.ZoneInfo(args.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise CommandError(f"unknown --timezone {args.timezone!r}", code=2) from exc
    try:
        rules = load_rules([args.rules])
        result = run_backtest(rules, args.csv, time_column=args.time_column, sep=sep,
                              device_type=args.device_type, timezone=args.timezone)
    except RulesError as exc:
        raise CommandError(str(exc), code=2) from exc
    for name in result.skipped_columns:
        err(f"skipped non-numeric column {name}")
    rows = []
    for f in result.findings:
        row = {"device": f.device_id, "metric": f.metric, "rule": f.rule_id,
               "severity": f.severity.value, "state": f.state.value,
               "ts": iso(f.ts_ns, args.timezone),
               "value": f.value if math.isfinite(f.value) else None}
        if f.detail:  # multivariate: the statistic and the top contributing metrics
            row["detail"] = f.detail
        rows.append(row)
    if args.json:
        for row in rows:
            print(orjson.dumps(row).decode())
    else:
        cols = ["ts", "device", "metric", "rule", "severity", "state", "value"]
        table = [[str(r[c]) if c != "value" else f"{r[c]:.6g}" if r[c] is not None else ""
                  for c in cols] for r in rows]
        widths = [max([len(c), *(len(t[i]) for t in table)]) for i, c in enumerate(cols)]
        print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
        for t in table:
            print("  ".join(x.ljust(w) for x, w in zip(t, widths, strict=True)))
        firing = sum(r["state"] == "firing" for r in rows)
        err(f"{result.readings} readings, {result.late} late or duplicate (not evaluated), "
            f"{firing} firing and {len(rows) - firing} resolved transitions")
    return 0
