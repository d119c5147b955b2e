"""The shift report's charts: fixed period axis and buckets, storms, colours, CJK text."""

from __future__ import annotations

import warnings
from pathlib import Path
from zoneinfo import ZoneInfo

import matplotlib.pyplot as plt
import pytest

from dashboards.definitions import KPIS
from dashboards.query import Series
from dashboards.report import (
    MAX_COLOURS,
    AlertRow,
    CaseRow,
    DeviceRow,
    Kpi,
    ReportData,
    Snapshot,
    alerts_figure,
    bucket_ms,
    cjk_fonts,
    cjk_style,
    figures,
    group_other,
    png,
    render_html,
    storm_cap,
    write_pdf,
)

TZ = ZoneInfo("Asia/Shanghai")
HOUR = 3_600_000
END = 1_772_409_600_000  # 2026-03-02 08:00 +08:00


def _series(key: str, value: str, points: dict[int, int]) -> Series:
    return Series("lifeline_alert", ((key, value),), ("time", "alerts"),
                  tuple((t, n) for t, n in sorted(points.items())))


def _data(by_type: list[Series], by_rule: list[Series]) -> ReportData:
    snap = Snapshot("database", END, [CaseRow(7, "dispatched", "major", "DC01", "燃气公司", True,
                                              END - 3 * 24 * HOUR)],
                    [AlertRow("gas-1", "gas-lel-level1", "major", "DC01", "gas_alarm")],
                    [DeviceRow("drain-9", "drain_level", "DC03", "will", END - HOUR)])
    return ReportData(END - 24 * HOUR, END, 24 * HOUR, bucket_ms(24 * HOUR), snap,
                      kpis=[Kpi(n, t, 0.8, 0.75) for n, t in KPIS],
                      alerts_by_type=by_type, alerts_by_grid=by_type, alerts_by_rule=by_rule,
                      case_changes=[Series("lifeline_case", (("state", "reported"),),
                                           ("time", "changes"), ((END - 5 * HOUR, 3),))])


def _hourly(start: int, values: list[int]) -> dict[int, int]:
    return {start + i * HOUR: v for i, v in enumerate(values) if v}


def test_buckets_are_fixed_steps_hourly_for_a_day() -> None:
    assert bucket_ms(24 * HOUR) == HOUR
    assert bucket_ms(2 * HOUR) == 300_000
    assert bucket_ms(8 * HOUR) == 900_000
    assert bucket_ms(7 * 24 * HOUR) == 6 * HOUR


def test_the_time_axis_spans_exactly_the_period() -> None:
    start = END - 24 * HOUR
    data = _data([_series("type", "gas_alarm", {start + 20 * HOUR: 2})], [])
    with cjk_style():
        fig = alerts_figure("t", data.alerts_by_type, "type", data, TZ)
    try:
        lo, hi = fig.axes[0].get_xlim()
        assert (lo * 86_400_000, hi * 86_400_000) == pytest.approx((start, END))
    finally:
        plt.close(fig)


def test_a_storm_of_one_rule_does_not_flatten_the_other_bars() -> None:
    start = END - 24 * HOUR
    ordinary = [1, 2, 0, 3, 1, 2, 4, 1, 0, 2, 1, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    by_type = [_series("type", "gas_alarm", _hourly(start, ordinary)),
               _series("type", "drain_level", {start + 14 * HOUR: 121})]
    by_rule = [_series("rule", "status:offline", {start + 14 * HOUR: 121}),
               _series("rule", "gas-lel-level1", _hourly(start, ordinary))]
    data = _data(by_type, by_rule)
    with cjk_style():
        fig = alerts_figure("Alerts", by_type, "type", data, TZ)
    try:
        ax = fig.axes[0]
        top = ax.get_ylim()[1]
        assert 4 <= top <= 12, "the axis is cut above the ordinary bars, not at 121"
        notes = [t.get_text() for t in ax.texts]
        assert any("121 alerts" in n and "121× status:offline" in n for n in notes), notes
        assert "axis cut" in ax.get_title()
    finally:
        plt.close(fig)
    assert storm_cap([1, 2, 3, 2, 1]) is None
    assert storm_cap([1, 2, 3, 2, 121]) == pytest.approx(6.0)


def test_at_most_eight_colours_the_rest_grouped_as_other() -> None:
    start = END - 24 * HOUR
    grids = [_series("grid", f"G{i:02d}", {start + i * HOUR: 20 - i}) for i in range(12)]
    grouped = group_other({s.tag("grid"): [float(v) for _, v in s.values] for s in grids})
    assert len(grouped) == MAX_COLOURS
    assert grouped[-1][0].startswith("other") and "(5)" in grouped[-1][0]
    data = _data(grids, [])
    with cjk_style():
        fig = alerts_figure("by grid", grids, "grid", data, TZ)
    try:
        legend = fig.axes[0].get_legend()
        assert legend is not None
        labels = [t.get_text() for t in legend.get_texts()]
        assert len(labels) == MAX_COLOURS and labels[-1].startswith("other")
    finally:
        plt.close(fig)


def _render_everything(data: ReportData, tmp_path: Path) -> str:
    figs = figures(data, TZ)
    try:
        images = {name: png(f) for name, f in figs.items()}
        write_pdf(tmp_path / "r.pdf", data, figs, TZ)
    finally:
        for f in figs.values():
            plt.close(f)
    return render_html(data, images, TZ)


def test_chinese_renders_with_the_cjk_font_without_missing_glyphs(tmp_path: Path) -> None:
    sans, mono = cjk_fonts()
    assert sans is not None and mono is not None, "fonts-noto-cjk (scripts/bootstrap)"
    start = END - 24 * HOUR
    data = _data([_series("type", "gas_alarm", _hourly(start, [1, 2, 3]))], [])
    with warnings.catch_warnings(record=True) as caught:  # the check can fail: without
        warnings.simplefilter("always")                   # the CJK font, glyphs go missing
        with plt.rc_context({"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"]}):
            _render_everything(data, tmp_path)
    assert any("missing from font" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cjk_style():
            page = _render_everything(data, tmp_path)
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert missing == []
    assert 'id="open-cases" data-value="1"' in page and 'id="overdue-cases" data-value="1"' in page
    assert 'id="open-cases-note" data-value="1"' in page  # opened before the shift
    pdf = (tmp_path / "r.pdf").read_bytes().replace(b"-", b"")
    assert b"NotoSansMonoCJK" in pdf and b"NotoSansCJK" in pdf, "the PDF embeds the CJK fonts"
