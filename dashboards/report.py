"""The shift report (值班交接报告): one self-contained HTML page (and optionally a PDF).

A handover has two halves:

- the **snapshot at the end of the period** (交接时状态): open and overdue cases, firing
  alerts and offline devices, whenever they started, so items carried over from earlier
  shifts are handed over too. It comes from a :class:`Snapshot` the caller provides (the
  ``lifeline report`` command reads the service database, the source of truth), or, without
  one, from the InfluxDB state rows over a look-back window (:func:`influx_snapshot`);
- **what happened during the period** (本班情况): KPIs against the previous period, alerts
  and case changes over time, the noisiest rules. These come from the dashboards' own panel
  queries (looked up by dashboard uid and panel title, expanded as for Grafana with every
  variable at All), bucketed on a fixed step over exactly the period.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from dashboards.definitions import (
    KPIS,
    STATE_WINDOW,
    Board,
    alerts_fired_query,
    all_boards,
    state_window,
)
from dashboards.errors import DashboardsError
from dashboards.model import GrafanaTarget, PanelQuery
from dashboards.query import InfluxQLClient, Series
from dashboards.render import setup_sdk, to_json
from dashboards.templating import (
    Resolved,
    TimeRange,
    interpolate,
    interval_text,
    resolve,
)

log = logging.getLogger(__name__)

OPEN_DONE = {"closed", "cancelled"}
MAX_BUCKETS = 36  # bars per chart at most: 24 h -> hourly, 2 h -> 5 min
# Fixed bucket steps (ms); the smallest giving at most MAX_BUCKETS bars over the period.
STEPS_MS = (1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000, 900_000, 1_800_000,
            3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000)
MAX_COLOURS = 8  # series drawn in their own colour; the rest are grouped as "other"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#17becf")
OTHER_COLOUR = "#9a9a9a"
STORM_FACTOR = 4.0  # a bar over this many times the typical bar is cut and annotated
DEFAULT_LOOKBACK_MS = 30 * 86_400_000
TABLE_ROWS = 25  # rows listed per snapshot table (the count always shows the total)
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK JP",
                "WenQuanYi Zen Hei", "Source Han Sans SC")
CJK_MONO = ("Noto Sans Mono CJK SC", "Noto Sans Mono CJK TC", "Noto Sans Mono CJK JP")


@dataclass(frozen=True, slots=True)
class Kpi:
    """One KPI this period and the previous one (fractions; None: no cases)."""

    name: str
    title: str
    current: float | None
    previous: float | None


@dataclass(frozen=True, slots=True)
class CaseRow:
    """An open case at the end of the period."""

    case_id: int
    state: str
    severity: str
    grid: str
    unit: str
    overdue: bool
    opened_ms: int | None = None
    changed_ms: int | None = None


@dataclass(frozen=True, slots=True)
class AlertRow:
    """An alert firing at the end of the period."""

    device: str
    rule: str
    severity: str
    grid: str
    device_type: str
    since_ms: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A device offline at the end of the period."""

    device: str
    device_type: str
    grid: str
    reason: str
    since_ms: int | None = None


@dataclass(slots=True)
class Snapshot:
    """State at the end of the period, carried-over items included.

    ``source`` names where it came from (``database`` or ``influxdb``); ``lookback_ms`` is
    the window the InfluxDB state rows were read over (None: not limited).
    """

    source: str
    as_of_ms: int
    open_cases: list[CaseRow] = field(default_factory=list)
    firing: list[AlertRow] = field(default_factory=list)
    offline: list[DeviceRow] = field(default_factory=list)
    lookback_ms: int | None = None

    @property
    def overdue(self) -> list[CaseRow]:
        """Open cases past a deadline (超期)."""
        return [c for c in self.open_cases if c.overdue]


@dataclass(slots=True)
class ReportData:
    """Everything the report shows."""

    start_ms: int
    end_ms: int
    period_ms: int
    step_ms: int
    snapshot: Snapshot
    kpis: list[Kpi] = field(default_factory=list)
    kpi_source: str = "influxdb"
    alerts_by_type: list[Series] = field(default_factory=list)
    alerts_by_grid: list[Series] = field(default_factory=list)
    alerts_by_rule: list[Series] = field(default_factory=list)
    case_changes: list[Series] = field(default_factory=list)
    noisy_rules: list[tuple[str, int]] = field(default_factory=list)

    @property
    def alerts_fired(self) -> int:
        """Alerts fired during the period."""
        return _total(self.alerts_by_type)

    @property
    def cases_opened(self) -> int:
        """Cases reported during the period."""
        return _total([s for s in self.case_changes if s.tag("state") == "reported"])

    @property
    def cases_closed(self) -> int:
        """Cases closed during the period."""
        return _total([s for s in self.case_changes if s.tag("state") == "closed"])


def _total(series: Sequence[Series]) -> int:
    return int(sum(float(row[1] or 0) for s in series for row in s.values))


def bucket_ms(period_ms: int) -> int:
    """The chart bucket for a period: the smallest fixed step with at most MAX_BUCKETS bars."""
    for step in STEPS_MS:
        if period_ms / step <= MAX_BUCKETS:
            return step
    return STEPS_MS[-1]


_INTERVAL_RE = re.compile(r"\$__interval(?!_ms)|\$\{__interval\}")


class _Runner:
    """Runs named dashboard panel queries over a time range."""

    def __init__(self, client: InfluxQLClient, target: GrafanaTarget) -> None:
        setup_sdk()
        self.client = client
        self.boards: dict[str, tuple[Board, dict[str, Any]]] = {
            b.uid: (b, to_json(b)) for b in all_boards(target)}
        self._resolved: dict[tuple[str, TimeRange], dict[str, Resolved]] = {}

    def query(self, uid: str, panel: str, tr: TimeRange, ref_id: str = "A",
              step_ms: int | None = None) -> list[Series]:
        """One panel query; ``step_ms`` fixes ``$__interval`` (the report's buckets). A
        state panel (alerts firing, open cases) looks back over the range ``tr`` instead of
        its fixed ``STATE_LOOKBACK``: the report's ``--lookback``."""
        board, _ = self.boards[uid]
        query = self._find(board.queries, panel, ref_id).query
        query = query.replace(STATE_WINDOW, state_window(f"{tr.to_ms - tr.from_ms}ms"))
        return self.run(uid, query, tr, step_ms)

    def run(self, uid: str, query: str, tr: TimeRange, step_ms: int | None = None) -> list[Series]:
        """A query with the variables of dashboard ``uid`` (all at All)."""
        _, data = self.boards[uid]
        key = (uid, tr)
        if key not in self._resolved:
            self._resolved[key] = resolve(data, self.client, tr)
        if step_ms is not None:
            query = _INTERVAL_RE.sub(interval_text(step_ms), query)
        return self.client.query(interpolate(query, self._resolved[key], tr))

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


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def influx_snapshot(client: InfluxQLClient, end_ms: int, lookback_ms: int = DEFAULT_LOOKBACK_MS,
                    target: GrafanaTarget | None = None) -> Snapshot:
    """The state at ``end_ms`` from InfluxDB's state rows written over ``lookback_ms``.

    Cases and alerts are transition logs: a case is open when its latest row in the window is
    not closed or cancelled, an alert fires when its latest row is firing. An item whose last
    change is older than the look-back is missed, hence a long default (30 d). Device status
    is read without a lower bound, as the devices dashboard does.
    """
    return _influx_snapshot(_Runner(client, target or GrafanaTarget()), end_ms, lookback_ms)


def _influx_snapshot(run: _Runner, end_ms: int, lookback_ms: int) -> Snapshot:
    if lookback_ms <= 0:
        raise DashboardsError("the look-back must be positive")
    tr = TimeRange(end_ms - lookback_ms, end_ms)
    snap = Snapshot("influxdb", end_ms, lookback_ms=lookback_ms)
    first: dict[int, int] = {}
    latest: dict[int, dict[str, Any]] = {}
    rows = [r for s in run.query("lifeline-overview", "Overdue cases (超期)", tr)
            for r in s.records()]
    for r in sorted(rows, key=lambda r: r.get("time") or 0):  # stable: ties keep row order
        case_id = _int(r.get("case_id"))
        if case_id is None:
            continue
        first.setdefault(case_id, int(r.get("time") or 0))
        latest[case_id] = r
    for case_id, r in sorted(latest.items()):
        if r.get("state") in OPEN_DONE:
            continue
        snap.open_cases.append(CaseRow(
            case_id, str(r.get("state") or ""), str(r.get("severity") or ""),
            str(r.get("grid") or ""), str(r.get("unit") or ""), r.get("overdue") == 1,
            first.get(case_id), _int(r.get("time"))))
    for s in run.query("lifeline-overview", "Active alerts", tr):
        for r in s.records():
            if r.get("firing") == 1:
                snap.firing.append(AlertRow(
                    str(r.get("device") or ""), str(r.get("rule") or ""),
                    str(r.get("severity") or ""), str(r.get("grid") or ""),
                    str(r.get("type") or ""), _int(r.get("time"))))
    snap.firing.sort(key=lambda a: (a.rule, a.device))
    status = [r for s in run.query("lifeline-devices", "Offline devices", tr)
              for r in s.records()]
    reasons = {r.get("device"): r.get("reason")
               for s in run.query("lifeline-devices", "Offline devices", tr, "B")
               for r in s.records()}
    snap.offline = sorted(
        (DeviceRow(str(r.get("device") or ""), str(r.get("type") or ""),
                   str(r.get("grid") or ""), str(reasons.get(r.get("device")) or ""),
                   _int(r.get("time")))
         for r in status if r.get("online") == 0), key=lambda d: d.device)
    return snap


def collect(client: InfluxQLClient, end_ms: int, period_ms: int,
            target: GrafanaTarget | None = None, *, snapshot: Snapshot | None = None,
            kpis: Sequence[Kpi] | None = None,
            lookback_ms: int = DEFAULT_LOOKBACK_MS) -> ReportData:
    """Run the report's queries for ``[end - period, end]`` (and the period before).

    ``snapshot`` is the state at ``end`` (default: from InfluxDB over ``lookback_ms``);
    ``kpis`` the KPIs of both periods (default: the latest ``lifeline_kpi`` point in each).
    """
    if period_ms <= 0:
        raise DashboardsError("the report period must be positive")
    run = _Runner(client, target or GrafanaTarget())
    now = TimeRange(end_ms - period_ms, end_ms)
    before = TimeRange(end_ms - 2 * period_ms, end_ms - period_ms)
    step = bucket_ms(period_ms)
    snap = snapshot if snapshot is not None else _influx_snapshot(run, end_ms, lookback_ms)
    data = ReportData(now.from_ms, now.to_ms, period_ms, step, snap)
    if kpis is not None:
        data.kpis, data.kpi_source = list(kpis), "database"
    else:
        for name, title in KPIS:
            data.kpis.append(Kpi(name, title,
                                 _last_value(run.query("lifeline-overview", title, now)),
                                 _last_value(run.query("lifeline-overview", title, before))))
    data.alerts_by_type = run.query("lifeline-overview", "Alerts fired by device type", now,
                                    step_ms=step)
    data.alerts_by_grid = run.query("lifeline-overview", "Alerts fired by grid", now,
                                    step_ms=step)
    data.alerts_by_rule = run.run("lifeline-overview", alerts_fired_query("rule"), now, step)
    data.case_changes = run.query(
        "lifeline-overview", "Case changes by state (reported = opened, closed = closed)", now,
        step_ms=step)
    noisy = [(s.tag("rule"), int(s.values[0][1] or 0))
             for s in run.query("lifeline-service", "Noisiest rules (alerts fired)", now)
             if s.values]
    data.noisy_rules = sorted(noisy, key=lambda x: (-x[1], x[0]))[:10]
    return data


# ------------------------------------------------------------------------------- fonts

def _font_names() -> set[str]:
    return {f.name for f in font_manager.fontManager.ttflist}


def cjk_fonts() -> tuple[str | None, str | None]:
    """The CJK sans-serif and monospace families matplotlib can use (None: not installed).

    Fonts installed after matplotlib built its cache are added from the system font paths.
    """
    names = _font_names()
    if not any(n in names for n in CJK_FAMILIES):
        for path in font_manager.findSystemFonts():
            if "CJK" in Path(path).name or "wqy" in path.lower():
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    font_manager.fontManager.addfont(path)
        names = _font_names()
    sans = next((n for n in CJK_FAMILIES if n in names), None)
    mono = next((n for n in CJK_MONO if n in names), None)
    return sans, mono or sans


@contextlib.contextmanager
def cjk_style() -> Iterator[None]:
    """matplotlib settings with a CJK font first (charts and PDF carry Chinese text)."""
    sans, _ = cjk_fonts()
    if sans is None:
        log.warning("no CJK font found (Debian package fonts-noto-cjk): Chinese text in the "
                    "report's charts will show as boxes")
    families = [sans] if sans else []
    with plt.rc_context({"font.family": "sans-serif",
                         "font.sans-serif": [*families, "DejaVu Sans"],
                         "axes.unicode_minus": False, "pdf.fonttype": 42}):
        yield


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Raise a chatty library logger to WARNING for a while (fontTools logs each subset)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------------------- charts

def _days(ms: float) -> float:
    """Epoch ms as a matplotlib date number (days since the epoch)."""
    return ms / 86_400_000


def _buckets(data: ReportData) -> list[int]:
    """Bucket starts covering the period (aligned as InfluxDB's GROUP BY time())."""
    step = data.step_ms
    first = data.start_ms - data.start_ms % step
    return list(range(first, data.end_ms + 1, step))


def _matrix(series: Sequence[Series], key: str, buckets: Sequence[int]) -> dict[str, list[float]]:
    """Counts per tag value and bucket (series of the same tag value summed)."""
    index = {b: i for i, b in enumerate(buckets)}
    out: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(buckets))
    for s in series:
        row_of = out[s.tag(key) or "-"]
        for row in s.values:
            i = index.get(int(row[0]))
            if i is not None:
                row_of[i] += float(row[1] or 0)
    return dict(out)


def group_other(counts: Mapping[str, list[float]],
                limit: int = MAX_COLOURS) -> list[tuple[str, list[float]]]:
    """The ``limit - 1`` largest series by total and the rest summed as "other"."""
    ranked = sorted(counts.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    if len(ranked) <= limit:
        return ranked
    keep, rest = ranked[:limit - 1], ranked[limit - 1:]
    other = [sum(col) for col in zip(*(v for _, v in rest), strict=True)]
    return [*keep, (f"other 其他 ({len(rest)})", other)]


def storm_cap(totals: Sequence[float]) -> float | None:
    """The y limit that keeps ordinary bars readable when a few bars tower (None: no cut).

    Typical bar: the upper quartile of the non-zero bars. A bar over STORM_FACTOR times it
    (and over 10) is a storm: the axis is cut at twice the largest ordinary bar.
    """
    nonzero = sorted(t for t in totals if t > 0)
    if len(nonzero) < 3:
        return None
    typical = nonzero[int(0.75 * (len(nonzero) - 1))]
    limit = max(STORM_FACTOR * typical, 10.0)
    ordinary = [t for t in nonzero if t <= limit]
    if not ordinary or nonzero[-1] <= limit:
        return None
    return max(2.0 * max(ordinary), 5.0)


def _period_axis(ax: Axes, data: ReportData, tz: ZoneInfo) -> None:
    """The x axis spans exactly the period, in the report's time zone."""
    ax.set_xlim(_days(data.start_ms), _days(data.end_ms))
    locator = mdates.AutoDateLocator(tz=tz, minticks=4, maxticks=13)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(
        mdates.ConciseDateFormatter(locator, tz=tz))  # type: ignore[no-untyped-call]
    ax.grid(axis="y", alpha=0.3)


def _dominant(rules: Mapping[str, list[float]], i: int) -> tuple[str, int] | None:
    best = max(rules.items(), key=lambda kv: kv[1][i], default=None)
    if best is None or best[1][i] <= 0:
        return None
    return best[0], int(best[1][i])


def alerts_figure(title: str, series: Sequence[Series], key: str, data: ReportData,
                  tz: ZoneInfo) -> Figure:
    """Alerts fired per bucket, stacked by ``key`` (at most MAX_COLOURS colours).

    A storm (a bar far above the others, e.g. 121 devices going offline at once) would
    flatten every other bar: the axis is cut above the ordinary bars, the storm bar is drawn
    hatched up to the cut and labelled with its total and the rule behind most of it.
    """
    buckets = _buckets(data)
    groups = group_other(_matrix(series, key, buckets))
    rules = _matrix(data.alerts_by_rule, "rule", buckets)
    totals = [sum(col) for col in zip(*(ys for _, ys in groups), strict=True)] if groups \
        else [0.0] * len(buckets)
    cap = storm_cap(totals)
    storm = [cap is not None and t > cap for t in totals]
    fig, ax = plt.subplots(figsize=(11, 3.0), dpi=100)
    xs = [_days(b) for b in buckets]
    width = _days(data.step_ms) * 0.85
    bottoms = [0.0] * len(buckets)
    for n, (label, counts) in enumerate(groups):
        colour = OTHER_COLOUR if label.startswith("other") else PALETTE[n % len(PALETTE)]
        ys = [0.0 if cut else y for y, cut in zip(counts, storm, strict=True)]
        ax.bar(xs, ys, width=width, align="edge", bottom=bottoms, label=label, color=colour)
        bottoms = [b + y for b, y in zip(bottoms, ys, strict=True)]
    if cap is not None:
        top_y = cap * 1.15
        ax.set_ylim(0, top_y)
        cut = [i for i, c in enumerate(storm) if c]
        ax.bar([xs[i] for i in cut], [top_y] * len(cut), width=width, align="edge",
               color="#f6d5d9", edgecolor="#b00020", hatch="///", linewidth=0.8,
               label="storm 风暴 (cut 截断)")
        for i in cut:
            dominant = _dominant(rules, i)
            note = f"{int(totals[i])} alerts 报警"
            if dominant:
                note += f"\n{dominant[1]}× {dominant[0]}"
            ax.annotate(note, (xs[i] + width, top_y * 0.96), xytext=(3, 0),
                        textcoords="offset points", ha="left", va="top", fontsize=7.5,
                        color="#b00020", fontweight="bold",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#b00020",
                              "alpha": 0.95})
        title += f"  — axis cut at {int(cap)} 纵轴截断"
    if not groups:
        ax.text(0.5, 0.5, "no alerts in this period 本班无报警", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("alerts 报警数")
    if groups:
        ax.legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                  frameon=False)
    _period_axis(ax, data, tz)
    fig.tight_layout()
    return fig


def cases_figure(data: ReportData, tz: ZoneInfo) -> Figure:
    """Cases opened and closed per bucket, side by side."""
    buckets = _buckets(data)
    counts = _matrix(data.case_changes, "state", buckets)
    fig, ax = plt.subplots(figsize=(11, 2.6), dpi=100)
    xs = [_days(b) for b in buckets]
    width = _days(data.step_ms) * 0.42
    for offset, (state, label, colour) in enumerate((
            ("reported", "opened 新增", "#d62728"), ("closed", "closed 结案", "#2ca02c"))):
        ys = counts.get(state, [0.0] * len(buckets))
        ax.bar([x + offset * width for x in xs], ys, width=width, align="edge",
               label=f"{label} ({int(sum(ys))})", color=colour)
    ax.set_title("Cases opened and closed 案件新增与结案", fontsize=10)
    ax.set_ylabel("cases 案件数")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    _period_axis(ax, data, tz)
    fig.tight_layout()
    return fig


def kpi_figure(kpis: Sequence[Kpi]) -> Figure:
    """KPIs of this period next to the previous one."""
    fig, ax = plt.subplots(figsize=(11, 2.6), dpi=100)
    xs = range(len(kpis))
    cur = [(k.current or 0.0) * 100 for k in kpis]
    prev = [(k.previous or 0.0) * 100 for k in kpis]
    ax.bar([x - 0.2 for x in xs], prev, width=0.4, label="previous period 上一班",
           color="#9a9a9a")
    ax.bar([x + 0.2 for x in xs], cur, width=0.4, label="this period 本班", color="#1f77b4")
    ax.set_xticks(list(xs), [k.title for k in kpis], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title("KPIs 考核指标: this period vs previous", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def figures(data: ReportData, tz: ZoneInfo) -> dict[str, Figure]:
    """The report's charts (create and save them inside :func:`cjk_style`)."""
    return {
        "kpis": kpi_figure(data.kpis),
        "alerts_by_type": alerts_figure("Alerts fired by device type 按设备类型",
                                        data.alerts_by_type, "type", data, tz),
        "alerts_by_grid": alerts_figure("Alerts fired by grid 按网格", data.alerts_by_grid,
                                        "grid", data, tz),
        "cases": cases_figure(data, tz),
    }


def png(fig: Figure) -> bytes:
    """A figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ------------------------------------------------------------------------------- HTML

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


def _age(ms: int | None, end_ms: int) -> str:
    if ms is None or ms <= 0:
        return "—"
    minutes = max(0, (end_ms - ms) // 60_000)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes / 60:.1f} h"
    return f"{minutes / 1440:.1f} d"


def _table(table_id: str, head: Sequence[str], rows: Sequence[Sequence[object]], empty: str,
           limit: int | None = None) -> str:
    if not rows:
        return f'<p class="empty" id="{table_id}" data-rows="0">{html.escape(empty)}</p>'
    shown = rows if limit is None else rows[:limit]
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if c is None else str(c))}</td>"
                                    for c in r) + "</tr>"
                   for r in shown)
    more = ("" if len(shown) == len(rows) else
            f'<p class="more">… {len(rows) - len(shown)} more 另有 {len(rows) - len(shown)} '
            "条未列出</p>")
    return (f'<table id="{table_id}" data-rows="{len(rows)}"><thead><tr>{th}</tr></thead>'
            f"<tbody>{body}</tbody></table>{more}")


def _figure(fig_id: str, label: str, value: int, note: str = "",
            note_value: int | None = None, warn: bool = False) -> str:
    attrs = f' id="{fig_id}-note" data-value="{note_value}"' if note_value is not None else ""
    extra = f'<span class="note"{attrs}>{html.escape(note)}</span>' if note else ""
    cls = "fig warn" if warn and value else "fig"
    return (f'<div class="{cls}"><span class="label">{html.escape(label)}</span>'
            f'<b id="{fig_id}" data-value="{value}">{value}</b>{extra}</div>')


def _firing_by_rule(firing: Sequence[AlertRow], tz: ZoneInfo) -> list[tuple[object, ...]]:
    """Firing alerts grouped by rule: a storm is one row, not a hundred."""
    groups: dict[str, list[AlertRow]] = defaultdict(list)
    for a in firing:
        groups[a.rule].append(a)
    rows: list[tuple[object, ...]] = []
    for rule, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        devices = sorted({a.device for a in items})
        shown = ", ".join(devices[:3]) + (f" … (+{len(devices) - 3})" if len(devices) > 3 else "")
        grids = sorted({a.grid for a in items if a.grid})
        since = min((a.since_ms for a in items if a.since_ms), default=None)
        rows.append((rule, len(items), ", ".join(sorted({a.severity for a in items})), shown,
                     ", ".join(grids[:4]) + (" …" if len(grids) > 4 else ""),
                     _fmt_time(since, tz)))
    return rows


CSS = """body{font-family:"Noto Sans CJK SC","Noto Sans CJK","Source Han Sans SC",
"PingFang SC","Microsoft YaHei",sans-serif;margin:1.2em 1.6em;color:#222;max-width:1150px}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;border-bottom:2px solid #ddd;
padding-bottom:.2em;margin:1.2em 0 .4em}h3{font-size:1em;margin:.8em 0 .3em}
.figs{display:flex;flex-wrap:wrap;gap:.4em;margin:.5em 0}.fig{border:1px solid #ccc;
border-radius:6px;padding:.3em .7em;min-width:7.2em;background:#fafafa}
.fig .label{display:block;font-size:.8em;color:#555}.fig b{font-size:1.6em}
.fig .note{display:block;font-size:.75em;color:#777}.fig.warn{border-color:#b00020}
.fig.warn b{color:#b00020}.group{font-size:.85em;color:#555;align-self:center;
width:7.5em;font-weight:bold}.cols{display:grid;
grid-template-columns:1fr 1fr;gap:1.2em;align-items:start}
table{border-collapse:collapse;margin:.3em 0 .6em}td,th{border:1px solid #bbb;
padding:1px 7px;font-size:.8em}th{background:#eee}.empty,.more,.src{color:#666;
font-size:.85em;margin:.2em 0}img{max-width:100%;display:block;margin:.3em 0}
.kpi td:nth-child(n+2){text-align:right}"""


def render_html(data: ReportData, images: Mapping[str, bytes], tz: ZoneInfo,
                generated_at: datetime | None = None) -> str:
    """The report page with the charts embedded as PNG data URIs.

    Headline figures carry stable ids and ``data-value`` attributes (``open-cases``,
    ``overdue-cases``, ``firing-alerts``, ``offline-devices``, ``alerts-fired``,
    ``cases-opened``, ``cases-closed``; KPI rows ``kpi-<name>`` with ``data-current`` and
    ``data-previous`` fractions) so tools and tests can read them from the rendered page.
    """
    gen = (generated_at or datetime.now(UTC)).astimezone(tz)
    start = _fmt_time(data.start_ms, tz)
    end = _fmt_time(data.end_ms, tz)
    hours = data.period_ms / 3_600_000
    snap = data.snapshot

    def img(name: str, alt: str) -> str:
        b64 = base64.b64encode(images[name]).decode()
        return f'<img id="{name}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'

    if snap.source == "database":
        source = "the service database (the source of truth)"
        source_zh = "业务数据库"
    else:
        days = (snap.lookback_ms or 0) / 86_400_000
        source = (f"InfluxDB state rows, looking back {days:g} d (items unchanged for longer "
                  "are not seen)")
        source_zh = f"InfluxDB 状态记录（回溯 {days:g} 天）"
    overdue = snap.overdue
    carried = sum(1 for c in snap.open_cases
                  if c.opened_ms is not None and c.opened_ms < data.start_ms)
    kpi_rows = []
    for k in data.kpis:
        cur = "" if k.current is None else repr(k.current)
        prev = "" if k.previous is None else repr(k.previous)
        kpi_rows.append(
            f'<tr id="kpi-{html.escape(k.name)}" data-current="{cur}" data-previous="{prev}">'
            f"<td>{html.escape(k.title)}</td><td>{_pct(k.current)}</td>"
            f"<td>{_pct(k.previous)}</td><td>{_delta(k)}</td></tr>")
    kpi_table = ('<table id="kpi-table"><thead><tr><th>KPI 指标</th><th>this period 本班</th>'
                 "<th>previous 上一班</th><th>change 变化</th></tr></thead><tbody>"
                 + "".join(kpi_rows) + "</tbody></table>") if kpi_rows else (
        '<p class="empty">no KPIs 无考核数据</p>')
    case_head = ("case 案件", "state 状态", "severity 级别", "grid 网格", "unit 责任单位",
                 "overdue 超期", "opened 上报", "open for 已持续")
    open_sorted = sorted(snap.open_cases, key=lambda c: (not c.overdue, c.case_id))
    case_rows = [(c.case_id, c.state, c.severity, c.grid, c.unit,
                  "超期 overdue" if c.overdue else "", _fmt_time(c.opened_ms, tz),
                  _age(c.opened_ms, data.end_ms)) for c in open_sorted]
    kpi_from = "the service database" if data.kpi_source == "database" else "InfluxDB"
    parts = [
        "<!DOCTYPE html>", '<html lang="zh-CN"><head><meta charset="utf-8">',
        f"<title>值班交接报告 Shift report {html.escape(start)} – {html.escape(end)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>值班交接报告 Shift handover report</h1>",
        f'<p id="period" data-start="{data.start_ms}" data-end="{data.end_ms}">'
        f"Period 交接时段: <b>{html.escape(start)}</b> to <b>{html.escape(end)}</b> "
        f"({hours:g} h, {tz.key}); compared with the {hours:g} h before. "
        f"Generated 生成于 {html.escape(gen.strftime('%Y-%m-%d %H:%M'))}.</p>",
        '<div class="figs"><span class="group">交接时<br>at handover</span>',
        _figure("open-cases", "open cases 未结案件", len(snap.open_cases),
                f"{carried} carried over 以前班次遗留", carried),
        _figure("overdue-cases", "overdue 超期案件", len(overdue), warn=True),
        _figure("firing-alerts", "alerts firing 报警中", len(snap.firing)),
        _figure("offline-devices", "devices offline 离线设备", len(snap.offline)),
        '</div><div class="figs"><span class="group">本班<br>this shift</span>',
        _figure("alerts-fired", "alerts fired 新报警", data.alerts_fired),
        _figure("cases-opened", "cases opened 新增案件", data.cases_opened),
        _figure("cases-closed", "cases closed 结案", data.cases_closed),
        "</div>",
        "<h2>At handover 交接时状态</h2>",
        f'<p class="src" id="snapshot-source" data-source="{snap.source}">State at '
        f"{html.escape(end)} from {html.escape(source)}, including items carried over from "
        f"earlier shifts. 交接时状态取自{html.escape(source_zh)}，含以前班次遗留事项。</p>",
        "<h3>Overdue cases 超期案件 and other open cases 其他未结案件</h3>",
        "" if overdue else '<p class="empty">no overdue cases 无超期案件</p>',
        _table("open-table", case_head, case_rows, "no open cases 无未结案件", TABLE_ROWS),
        '<div class="cols"><div>',
        "<h3>Alerts firing 报警中 (by rule 按规则)</h3>",
        _table("firing-table", ("rule 规则", "alerts 数量", "severity 级别", "devices 设备",
                                "grids 网格", "since 最早"),
               _firing_by_rule(snap.firing, tz), "no alerts firing 无报警"),
        "</div><div>",
        "<h3>Devices offline 离线设备</h3>",
        _table("offline-table", ("device 设备", "type 类型", "grid 网格", "reason 原因",
                                 "since 离线时间"),
               [(d.device, d.device_type, d.grid, d.reason, _fmt_time(d.since_ms, tz))
                for d in snap.offline], "every device online 设备全部在线", TABLE_ROWS),
        "</div></div>",
        "<h2>During the period 本班情况</h2>",
        '<div class="cols"><div>',
        "<h3>KPIs 考核指标</h3>",
        f'<div class="kpi">{kpi_table}</div>',
        f'<p class="src">Over the cases created in each period, from {kpi_from}. '
        "按各时段内上报的案件计算。</p>",
        "</div><div>",
        "<h3>Noisiest rules 报警最多的规则</h3>",
        _table("noisy-table", ("rule 规则", "alerts fired 报警数"), data.noisy_rules,
               "no alerts fired 无报警"),
        "</div></div>",
        img("alerts_by_type", "alerts by device type"),
        img("alerts_by_grid", "alerts by grid"),
        img("cases", "cases opened and closed"),
        img("kpis", "KPIs this period vs previous"),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_pdf(path: Path, data: ReportData, figs: Mapping[str, Figure], tz: ZoneInfo) -> None:
    """The same report as a PDF (a bilingual summary page, then the charts).

    Call inside :func:`cjk_style` so the Chinese text has a font.
    """
    _, mono = cjk_fonts()
    snap = data.snapshot
    with _quiet("fontTools"), PdfPages(path) as pdf:
        page = plt.figure(figsize=(8.27, 11.69))
        lines = [f"值班交接报告 Shift handover report  {_fmt_time(data.start_ms, tz)} - "
                 f"{_fmt_time(data.end_ms, tz)} ({tz.key})", "",
                 f"交接时状态 At handover (source 来源: {snap.source})",
                 f"  未结案件 open cases: {len(snap.open_cases)}   "
                 f"超期 overdue: {len(snap.overdue)}",
                 f"  报警中 alerts firing: {len(snap.firing)}   "
                 f"离线设备 devices offline: {len(snap.offline)}", "",
                 "本班情况 During the period",
                 f"  新报警 alerts fired: {data.alerts_fired}   新增案件 cases opened: "
                 f"{data.cases_opened}   结案 cases closed: {data.cases_closed}", "",
                 "考核指标 KPI              本班 this   上一班 previous   变化 change"]
        lines += [f"  {k.title:<22}{_pct(k.current):>9}{_pct(k.previous):>12}  {_delta(k)}"
                  for k in data.kpis]
        lines += ["", "超期案件 Overdue cases:"] + [
            f"  #{c.case_id}  {c.state}  {c.severity}  网格 grid {c.grid}  {c.unit}"
            for c in snap.overdue[:20]]
        lines += ["", "离线设备 Devices offline:"] + [
            f"  {d.device}  {d.device_type}  网格 grid {d.grid}  {d.reason}"
            for d in snap.offline[:20]]
        lines += ["", "报警最多的规则 Noisiest rules:"] + [
            f"  {rule}: {n}" for rule, n in data.noisy_rules]
        page.text(0.05, 0.97, "\n".join(lines), va="top", fontsize=8,
                  family=mono or "monospace")
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
                 target: GrafanaTarget | None = None, pdf: bool = False,
                 snapshot: Snapshot | None = None, kpis: Sequence[Kpi] | None = None,
                 lookback_ms: int = DEFAULT_LOOKBACK_MS) -> Written:
    """Collect, plot and write the report (HTML, and a PDF next to it when asked)."""
    t = target or GrafanaTarget()
    tz = ZoneInfo(t.timezone)
    data = collect(client, end_ms, period_ms, t, snapshot=snapshot, kpis=kpis,
                   lookback_ms=lookback_ms)
    with cjk_style():
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
    log.info("shift report written to %s (snapshot from %s)", out, data.snapshot.source)
    return Written(out, pdf_path, tuple(images))
