"""``lifeline dashboards render|push|check``: Grafana dashboards as code."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common.duration import parse_duration_ns
from dashboards.check import run_dashboard
from dashboards.definitions import all_boards
from dashboards.errors import DashboardsError
from dashboards.model import GrafanaTarget
from dashboards.push import push
from dashboards.query import InfluxQLClient
from dashboards.render import InfluxSource, datasource_payload, render, setup_sdk, to_json
from dashboards.templating import TimeRange
from devices.catalogue import Catalogue
from devices.errors import CatalogueError
from lifeline.commands.common import CommandError, settings_from
from lifeline.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dashboards`` command."""
    p = sub.add_parser("dashboards", help="render, push and check the Grafana dashboards")
    dsub = p.add_subparsers(dest="dashboards_command", required=True)
    r = dsub.add_parser("render", help="write dashboard JSON and Grafana provisioning YAML")
    r.add_argument("--out", required=True, type=Path, help="output directory")
    r.add_argument("--dashboards-path", default="/var/lib/grafana/dashboards/citylifeline",
                   help="where Grafana will find the dashboard JSON (provider path)")
    r.set_defaults(func=render_command)
    u = dsub.add_parser("push", help="upload the dashboards to a Grafana 10+ server")
    u.add_argument("--url", help="Grafana URL (default: grafana.url)")
    u.add_argument("--token", help="service account token (default: grafana.token)")
    u.add_argument("--folder", help="folder name, created when missing (default: "
                   "grafana.folder; '' for General)")
    u.add_argument("--create-datasource", action="store_true",
                   help="create or update the InfluxDB datasource from the influx settings")
    u.add_argument("--json", action="store_true", help="print the result as JSON")
    u.set_defaults(func=push_command)
    c = dsub.add_parser("check", help="run every panel query against the configured InfluxDB "
                        "and list the panels that come back empty")
    c.add_argument("--range", default="24h", help="time range ending now (default 24h)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=check_command)


def grafana_target(settings: Settings) -> GrafanaTarget:
    """Datasource, folder, time zone, the catalogue's device types (built-in plus
    ``devices.catalogue``) and the data links' URLs from the settings."""
    g = settings.grafana
    catalogue = Catalogue.builtin()
    if settings.devices.catalogue:
        try:
            catalogue = Catalogue.load(settings.devices.catalogue, catalogue)
        except CatalogueError as exc:
            raise CommandError(str(exc), code=2) from exc
    host = settings.api.host
    host = "localhost" if host in ("", "0.0.0.0", "::") else (  # noqa: S104 - compared
        f"[{host}]" if ":" in host else host)
    api_url = g.api_url or f"http://{host}:{settings.api.port}"
    return GrafanaTarget(datasource_uid=g.datasource_uid, datasource_name=g.datasource_name,
                         folder=g.folder, timezone=g.timezone,
                         device_types=tuple(catalogue.types), api_url=api_url,
                         case_url=g.case_url)


def influx_source(settings: Settings) -> InfluxSource:
    """The InfluxDB the datasource queries (InfluxQL; on 2.x/3.x via the bucket's DBRP)."""
    inf = settings.influx
    return InfluxSource(url=inf.url, database=inf.bucket if inf.version == 2 else inf.database,
                        version=inf.version, username=inf.username,
                        password=inf.password.get_secret_value(),
                        token=inf.token.get_secret_value())


def influx_client(settings: Settings) -> InfluxQLClient:
    """An InfluxQL client for the configured InfluxDB."""
    src = influx_source(settings)
    return InfluxQLClient(src.url, src.database, token=src.token, username=src.username,
                          password=src.password, timeout=settings.influx.timeout)


def render_command(args: argparse.Namespace) -> int:
    """Write the dashboards and provisioning files."""
    settings = settings_from(args)
    try:
        out = render(args.out, grafana_target(settings), influx_source(settings),
                     args.dashboards_path)
    except DashboardsError as exc:
        raise CommandError(str(exc)) from exc
    for path in (*out.dashboards, *out.provisioning):
        print(path)
    return 0


def push_command(args: argparse.Namespace) -> int:
    """Upload every dashboard; print what changed."""
    settings = settings_from(args)
    g = settings.grafana
    url = args.url or g.url
    token = args.token or g.token.get_secret_value()
    if not url:
        raise CommandError("no Grafana URL: pass --url or set grafana.url", code=2)
    if not token:
        raise CommandError("no Grafana token: pass --token or set grafana.token", code=2)
    target = grafana_target(settings)
    folder = g.folder if args.folder is None else args.folder
    setup_sdk()
    boards = [to_json(b) for b in all_boards(target)]
    ds = (datasource_payload(target, influx_source(settings)) if args.create_datasource
          else None)
    try:
        result = push(url, token, boards, folder=folder or None, datasource=ds,
                      timeout=g.timeout)
    except DashboardsError as exc:
        raise CommandError(str(exc), code=3) from exc
    if args.json:
        print(json.dumps({"grafana_version": result.grafana_version,
                          "items": [{"kind": i.kind, "uid": i.uid, "title": i.title,
                                     "change": i.change} for i in result.items]},
                         ensure_ascii=False))
    else:
        print(f"Grafana {result.grafana_version} at {url}")
        for i in result.items:
            print(f"  {i.change:<9} {i.kind:<10} {i.uid}  {i.title}")
        print(f"{len(result.changed())} changed, "
              f"{len(result.items) - len(result.changed())} unchanged")
    return 0


def check_command(args: argparse.Namespace) -> int:
    """Run every panel query; exit 1 when a panel comes back empty or fails."""
    settings = settings_from(args)
    try:
        span_ms = parse_duration_ns(args.range) // 1_000_000
    except ValueError as exc:
        raise CommandError(f"--range: {exc}", code=2) from exc
    if span_ms <= 0:
        raise CommandError("--range must be positive", code=2)
    now_ms = int(time.time() * 1000)
    tr = TimeRange(now_ms - span_ms, now_ms)
    setup_sdk()
    rows: list[dict[str, Any]] = []
    try:
        with influx_client(settings) as client:
            for board in all_boards(grafana_target(settings)):
                for o in run_dashboard(to_json(board), board.queries, client, tr):
                    rows.append({"dashboard": o.dashboard, "panel": o.target.panel,
                                 "ref_id": o.target.ref_id, "rows": o.rows, "ok": o.ok,
                                 "missing": list(o.missing), "error": o.error})
    except DashboardsError as exc:
        raise CommandError(str(exc), code=3) from exc
    bad = [r for r in rows if not r["ok"]]
    if args.json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
    else:
        for r in rows:
            mark = "ok   " if r["ok"] else "EMPTY" if not r["error"] else "ERROR"
            extra = r["error"] or (f"missing {r['missing']}" if r["missing"] else "")
            print(f"{mark} {r['dashboard']:<18} {r['panel']} [{r['ref_id']}] "
                  f"rows={r['rows']} {extra}")
        print(f"{len(rows) - len(bad)} of {len(rows)} panel queries returned data")
    return 1 if bad else 0
