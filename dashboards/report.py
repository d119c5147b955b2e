"""The shift report (值班交接报告): one self-contained HTML page (and optionally a PDF).

Built from the dashboards' own queries (looked up by dashboard uid and panel title,
expanded exactly as for Grafana with every variable at All), for a period ending now
and the period before it for comparison.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from dashboards.definitions import KPIS, Board, all_boards
from dashboards.errors import DashboardsError
from dashboards.model import GrafanaTarget, PanelQuery
from dashboards.query import InfluxQLClient, Series
from dashboards.render import setup_sdk, to_json
from dashboards.templating import (
    Resolved,
    TimeRange,
    interpolate,
    interval_ms,
    resolve,
)

log = logging.getLogger(__name__)

OPEN_DONE = {"closed", "cancelled"}
REPORT_POINTS = 48  # bars per chart (the $__interval of the report's queries)


@dataclass(frozen=True, slots=True)
class Kpi:
    """One KPI this period and the previous one (fractions; None: no cases)."""

    name: str
    title: str
    current: float | None
    previous: float | None


@dataclass(slots=True)
class ReportData:
    """Everything the report shows."""

    start_ms: int
    end_ms: int
    period_ms: int
    step_ms: int
    kpis: list[Kpi] = field(default_factory=list)
    alerts_by_type: list[Series] = field(default_factory=list)
    alerts_by_grid: list[Series] = field(default_factory=list)
    case_changes: list[Series] = field(default_factory=list)
    overdue: list[dict[str, Any]] = field(default_factory=list)
    open_cases: int = 0
    offline: list[dict[str, Any]] = field(default_factory=list)
    noisy_rules: list[tuple[str, int]] = field(default_factory=list)
    active_alerts: int = 0


class _Runner:
    """Runs named dashboard panel queries over a time range."""

    def __init__(self, client: InfluxQLClient, target: GrafanaTarget) -> None:
        setup_sdk()
        self.client = client
        self.boards: dict[str, tuple[Board, dict[str, Any]]] = {
            b.uid: (b, to_json(b)) for b in all_boards(target)}
        self._resolved: dict[tuple[str, TimeRange], dict[str, Resolved]] = {}

    def query(self, uid: str, panel: str, tr: TimeRange, ref_id: str = "A") -> list[Series]:
        board, data = self.boards[uid]
        pq = self._find(board.queries, panel, ref_id)
        key = (uid, tr)
        if key not in self._resolved:
            self._resolved[key] = resolve(data, self.client, tr)
        return self.client.query(interpolate(pq.query, self._resolved[key], tr,
                                             max_data_points=REPORT_POINTS))

    @staticmethod
    def _find(queries: Sequence[PanelQuery], panel: str, ref_id: str) -> PanelQuery:
        for q in queries:
            if q.panel == panel and q.ref_id == ref_id:
                return q
        raise DashboardsError(f"no panel query {panel!r}/{ref_id}")


def _last_value(series: list[Series]) -> float | None:
    for s in series:
        for row in reversed(s.values):
            if row[-1] is not None:
                return float(row[-1])
    return None


def _last_per(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    """Latest row per ``key`` (rows in time order)."""
    out: dict[Any, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r.get("time") or 0):
        out[r.get(key)] = r
    return out


def collect(client: InfluxQLClient, end_ms: int, period_ms: int,
            target: GrafanaTarget | None = None) -> ReportData:
    """Run the report's queries for ``[end - period, end]`` and the period before."""
    if period_ms <= 0:
        raise DashboardsError("the report period must be positive")
    run = _Runner(client, target or GrafanaTarget())
    now = TimeRange(end_ms - period_ms, end_ms)
    before = TimeRange(end_ms - 2 * period_ms, end_ms - period_ms)
    data = ReportData(now.from_ms, now.to_ms, period_ms, interval_ms(now, REPORT_POINTS))
    for name, title in KPIS:
        data.kpis.append(Kpi(name, title,
                             _last_value(run.query("lifeline-overview", title, now)),
                             _last_value(run.query("lifeline-overview", title, before))))
    data.alerts_by_type = run.query("lifeline-overview", "Alerts fired by device type", now)
    data.alerts_by_grid = run.query("lifeline-overview", "Alerts fired by grid", now)
    data.case_changes = run.query(
        "lifeline-overview", "Case changes by state (reported = opened, closed = closed)", now)
    rows = [r for s in run.query("lifeline-overview", "Overdue cases (超期)", now)
            for r in s.records()]
    latest = _last_per(rows, "case_id")
    open_cases = [r for r in latest.values() if r.get("state") not in OPEN_DONE]
    data.open_cases = len(open_cases)
    data.overdue = sorted((r for r in open_cases if r.get("overdue") == 1),
                          key=lambda r: r.get("case_id") or 0)
    offline = [r for s in run.query("lifeline-devices", "Offline devices", now)
               for r in s.records()]
    reasons = {r.get("device"): r.get("reason")
               for s in run.query("lifeline-devices", "Offline devices", now, "B")
               for r in s.records()}
    for r in offline:
        r["reason"] = reasons.get(r.get("device"), "")
    data.offline = sorted((r for r in offline if r.get("online") == 0),
                          key=lambda r: str(r.get("device")))
    noisy = [(s.tag("rule"), int(s.values[0][1] or 0))
             for s in run.query("lifeline-service", "Noisiest rules (alerts fired)", now)
             if s.values]
    data.noisy_rules = sorted(noisy, key=lambda x: (-x[1], x[0]))[:10]
    active = [r for s in run.query("lifeline-overview", "Active alerts", now)
              for r in s.records()]
    data.active_alerts = sum(1 for r in active if r.get("firing") == 1)
    return data


# ------------------------------------------------------------------------------- rendering

def _days(s: Series) -> list[float]:
    """Row times as matplotlib date numbers (days since the epoch)."""
    return [row[0] / 86_400_000 for row in s.values]


def _time_axis(ax: Axes, tz: ZoneInfo) -> None:
    ax.xaxis_date(tz)


def _stacked_bars(title: str, series: list[Series], key: str, tz: ZoneInfo,
                  step_ms: int) -> Figure:
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    bottoms: dict[float, float] = defaultdict(float)
    width = step_ms / 86_400_000 * 0.9  # days (matplotlib dates)
    for s in sorted(series, key=lambda s: s.tag(key)):
        xs = _days(s)
        ys = [float(row[1] or 0) for row in s.values]
        ax.bar(xs, ys, width=width, align="edge", bottom=[bottoms[x] for x in xs],
               label=s.tag(key) or "-")
        for x, y in zip(xs, ys, strict=True):
            bottoms[x] += y
    if not series:
        ax.text(0.5, 0.5, "no alerts in this period", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_title(title)
    ax.set_ylabel("alerts")
    if series:
        ax.legend(fontsize=7, ncol=4, loc="upper left")
    _time_axis(ax, tz)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def _cases_figure(series: list[Series], tz: ZoneInfo, step_ms: int) -> Figure:
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    by_state = {s.tag("state"): s for s in series}
    width = step_ms / 86_400_000 * 0.45  # two bars per interval
    for offset, (state, label, colour) in enumerate((("reported", "opened", "tab:red"),
                                                     ("closed", "closed", "tab:green"))):
        s = by_state.get(state)
        if s is None:
            ax.bar([], [], label=f"{label} (none)", color=colour)
            continue
        ax.bar([x + offset * width for x in _days(s)], [float(r[1] or 0) for r in s.values],
               width=width, align="edge", label=label, color=colour)
    ax.set_title("Cases opened and closed")
    ax.set_ylabel("cases")
    ax.legend(fontsize=8)
    _time_axis(ax, tz)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def _kpi_figure(kpis: list[Kpi]) -> Figure:
    fig, ax = plt.subplots(figsize=(9, 3.0), dpi=100)
    names = [k.name.replace("_", " ") for k in kpis]
    xs = range(len(kpis))
    cur = [(k.current or 0.0) * 100 for k in kpis]
    prev = [(k.previous or 0.0) * 100 for k in kpis]
    ax.bar([x - 0.2 for x in xs], prev, width=0.4, label="previous period", color="tab:gray")
    ax.bar([x + 0.2 for x in xs], cur, width=0.4, label="this period", color="tab:blue")
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title("KPIs: this period vs previous")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figures(data: ReportData, tz: ZoneInfo) -> dict[str, Figure]:
    """The report's charts."""
    return {
        "alerts_by_type": _stacked_bars("Alerts fired by device type", data.alerts_by_type,
                                        "type", tz, data.step_ms),
        "alerts_by_grid": _stacked_bars("Alerts fired by grid", data.alerts_by_grid, "grid",
                                        tz, data.step_ms),
        "cases": _cases_figure(data.case_changes, tz, data.step_ms),
        "kpis": _kpi_figure(data.kpis),
    }


def png(fig: Figure) -> bytes:
    """A figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _pct(v: float | None) -> str:
    return "—" if v is None or math.isnan(v) else f"{v * 100:.1f}%"


def _delta(k: Kpi) -> str:
    if k.current is None or k.previous is None:
        return "—"
    d = (k.current - k.previous) * 100
    return f"{d:+.1f} pp"


def _fmt_time(ms: Any, tz: ZoneInfo) -> str:
    if not isinstance(ms, int | float) or ms <= 0:
        return "—"
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M")


def _table(head: Sequence[str], rows: Sequence[Sequence[object]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{html.escape(empty)}</p>'
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if c is None else str(c))}</td>"
                                    for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:sans-serif;margin:2em;color:#222}h1{font-size:1.5em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;
font-size:.9em}th{background:#eee}.empty{color:#666}img{max-width:100%;display:block}
.kpi td:nth-child(n+2){text-align:right}"""


def render_html(data: ReportData, images: Mapping[str, bytes], tz: ZoneInfo,
                generated_at: datetime | None = None) -> str:
    """The report page with the charts embedded as PNG data URIs."""
    gen = (generated_at or datetime.now(UTC)).astimezone(tz)
    start = _fmt_time(data.start_ms, tz)
    end = _fmt_time(data.end_ms, tz)
    hours = data.period_ms / 3_600_000

    def img(name: str, alt: str) -> str:
        b64 = base64.b64encode(images[name]).decode()
        return f'<img id="{name}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'

    kpi_rows = [(k.title, _pct(k.current), _pct(k.previous), _delta(k)) for k in data.kpis]
    overdue_rows = [(r.get("case_id"), r.get("state"), r.get("severity"), r.get("grid"),
                     r.get("unit"), _fmt_time(r.get("time"), tz)) for r in data.overdue]
    offline_rows = [(r.get("device"), r.get("type"), r.get("grid"), r.get("reason"),
                     _fmt_time(r.get("time"), tz)) for r in data.offline]
    parts = [
        "<!DOCTYPE html>", '<html lang="zh-CN"><head><meta charset="utf-8">',
        f"<title>值班交接报告 Shift report {html.escape(start)} – {html.escape(end)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>值班交接报告 Shift handover report</h1>",
        f"<p>Period: <b>{html.escape(start)}</b> to <b>{html.escape(end)}</b> "
        f"({hours:g} h, {tz.key}); compared with the {hours:g} h before. "
        f"Generated {html.escape(gen.strftime('%Y-%m-%d %H:%M'))}.</p>",
        f"<p>Active alerts: <b>{data.active_alerts}</b> · open cases: <b>{data.open_cases}"
        f"</b> · overdue (超期): <b>{len(data.overdue)}</b> · devices offline: "
        f"<b>{len(data.offline)}</b></p>",
        "<h2>KPIs 考核指标</h2>",
        '<div class="kpi">' + _table(("KPI", "this period", "previous period", "change"),
                                     kpi_rows, "no KPIs written in this period") + "</div>",
        img("kpis", "KPIs this period vs previous"),
        "<h2>Alerts 报警</h2>", img("alerts_by_type", "alerts by device type"),
        img("alerts_by_grid", "alerts by grid"),
        "<h3>Noisiest rules</h3>",
        _table(("rule", "alerts fired"), data.noisy_rules, "no alerts fired"),
        "<h2>Cases 案件</h2>", img("cases", "cases opened and closed"),
        "<h3>Overdue cases 超期案件</h3>",
        _table(("case", "state", "severity", "grid", "unit", "last change"), overdue_rows,
               "no overdue cases"),
        "<h2>Devices offline 离线设备</h2>",
        _table(("device", "type", "grid", "reason", "since"), offline_rows,
               "every device online"),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_pdf(path: Path, data: ReportData, figs: Mapping[str, Figure], tz: ZoneInfo) -> None:
    """The same report as a PDF (matplotlib: a summary page, then the charts)."""
    with PdfPages(path) as pdf:
        page = plt.figure(figsize=(8.27, 11.69))
        lines = [f"Shift handover report  {_fmt_time(data.start_ms, tz)} - "
                 f"{_fmt_time(data.end_ms, tz)} ({tz.key})", "",
                 f"Active alerts: {data.active_alerts}   open cases: {data.open_cases}   "
                 f"overdue: {len(data.overdue)}   devices offline: {len(data.offline)}", "",
                 "KPI                 this period   previous   change"]
        lines += [f"{k.name:<20}{_pct(k.current):>11}{_pct(k.previous):>11}  {_delta(k)}"
                  for k in data.kpis]
        lines += ["", "Overdue cases:"] + [
            f"  case {r.get('case_id')}  {r.get('state')}  {r.get('severity')}  "
            f"grid {r.get('grid')}" for r in data.overdue[:30]]
        lines += ["", "Devices offline:"] + [
            f"  {r.get('device')}  {r.get('type')}  grid {r.get('grid')}"
            for r in data.offline[:30]]
        lines += ["", "Noisiest rules:"] + [f"  {rule}: {n}" for rule, n in data.noisy_rules]
        page.text(0.05, 0.97, "\n".join(lines), va="top", family="monospace", fontsize=8)
        pdf.savefig(page)
        plt.close(page)
        for fig in figs.values():
            pdf.savefig(fig)


@dataclass(frozen=True, slots=True)
class Written:
    """Files the report wrote."""

    html: Path
    pdf: Path | None
    images: tuple[str, ...]


def write_report(client: InfluxQLClient, out: Path, *, end_ms: int, period_ms: int,
                 target: GrafanaTarget | None = None, pdf: bool = False) -> Written:
    """Collect, plot and write the report (HTML, and a PDF next to it when asked)."""
    t = target or GrafanaTarget()
    tz = ZoneInfo(t.timezone)
    data = collect(client, end_ms, period_ms, t)
    figs = figures(data, tz)
    try:
        images = {name: png(f) for name, f in figs.items()}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_html(data, images, tz), encoding="utf-8")
        pdf_path = None
        if pdf:
            pdf_path = out.with_suffix(".pdf")
            write_pdf(pdf_path, data, figs, tz)
    except OSError as exc:
        raise DashboardsError(f"cannot write the report to {out}: {exc}") from exc
    finally:
        for f in figs.values():
            plt.close(f)
    log.info("shift report written to %s", out)
    return Written(out, pdf_path, tuple(images))
