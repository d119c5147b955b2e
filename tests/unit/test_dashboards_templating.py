"""Template expansion like Grafana's InfluxDB datasource, and the dashboards' own lines."""

from __future__ import annotations

import pytest

from dashboards.errors import DashboardsError
from dashboards.lines import device_info_line, service_line
from dashboards.templating import (
    ALL,
    Resolved,
    TimeRange,
    Variable,
    interpolate,
    interval_ms,
    interval_text,
    regex_escape,
    round_interval,
)
from devices.model import Device
from lifeline.dashboard_feed import DeviceInfoFeed

HOUR = 3_600_000


def var(name: str, options: tuple[str, ...], selected: tuple[str, ...], *, multi: bool = True,
        include_all: bool = True, all_value: str = "") -> Resolved:
    return Resolved(Variable(name, "query", "", multi, include_all, all_value), options,
                    selected)


@pytest.mark.parametrize(("ms", "rounded"), [
    (1, 10), (14, 10), (16, 20), (1200, 1000), (9000, 10000), (50_000, 60_000),
    (100_000, 120_000), (3_000_000, 3_600_000), (100_000_000, 86_400_000),
    (10**13, 31536000000)])
def test_round_interval_matches_grafana(ms: float, rounded: int) -> None:
    assert round_interval(ms) == rounded


def test_interval_text_and_interval() -> None:
    assert [interval_text(x) for x in (86_400_000, HOUR, 120_000, 10_000, 200)] == [
        "1d", "1h", "2m", "10s", "200ms"]
    assert interval_ms(TimeRange(0, 24 * HOUR)) == 60_000  # 86.4 s → 1m
    assert interval_ms(TimeRange(0, 6 * HOUR)) == 20_000
    assert interval_ms(TimeRange(0, 60_000)) == 1000  # never below 1 s


def test_time_filter_absolute_and_relative() -> None:
    assert TimeRange(1000, 5000).filter() == "time >= 1000ms and time <= 5000ms"
    assert TimeRange(0, 6 * HOUR, relative=True).filter() == "time >= now() - 6h"
    with pytest.raises(DashboardsError):
        TimeRange(5000, 5000)


def test_variable_values_like_grafana() -> None:
    grid = var("grid", ("G1", "G2", "G3"), (ALL,))
    assert grid.text() == "(G1|G2|G3)"
    assert var("device", ("a",), (ALL,), all_value=".*").text() == ".*"
    assert var("grid", ("G1", "G2"), ("G2",)).text() == "G2"
    assert var("grid", ("G1", "G2"), ("G1", "G2")).text() == "(G1|G2)"
    single = var("host", ("h.1",), ("h.1",), multi=False, include_all=False)
    assert single.text() == "h.1"


@pytest.mark.parametrize(("value", "escaped"), [
    ("a.b", r"a\.b"), ("x/y", r"x\/y"), ("(a|b)", r"\(a\|b\)"), ("$^*+?", r"\$\^\*\+\?"),
    ("[0-9]{2}", r"\[0-9\]\{2\}"), ("back\\slash", "back\\\\slash"), ("网格-01", "网格-01")])
def test_hostile_values_cannot_break_out_of_the_regex(value: str, escaped: str) -> None:
    assert regex_escape(value) == escaped
    assert var("grid", (value, "b"), (ALL,)).text() == f"({escaped}|b)"


def test_interpolate_every_syntax() -> None:
    tr = TimeRange(1_000_000, 1_000_000 + 6 * HOUR)
    resolved = {"grid": var("grid", ("G1", "G2"), (ALL,)),
                "device": var("device", ("d1",), ("d1",))}
    q = ('SELECT mean("x") FROM "m" WHERE $timeFilter AND "grid" =~ /^$grid$/ AND '
         '"device" =~ /^${device}$/ AND "g" =~ /^[[grid]]$/ AND time <= ${__to}ms AND '
         '"u" = \'$unknown\' GROUP BY time($__interval) LIMIT $__interval_ms')
    assert interpolate(q, resolved, tr) == (
        'SELECT mean("x") FROM "m" WHERE time >= 1000000ms and time <= 22600000ms AND '
        '"grid" =~ /^(G1|G2)$/ AND "device" =~ /^d1$/ AND "g" =~ /^(G1|G2)$/ AND '
        'time <= 22600000ms AND "u" = \'$unknown\' GROUP BY time(20s) LIMIT 20000')


def test_variable_from_json() -> None:
    v = Variable.from_json({"name": "grid", "type": "query", "multi": True,
                            "includeAll": True, "query": {"query": "SHOW TAG VALUES"}})
    assert v.query == "SHOW TAG VALUES" and v.multi and v.include_all and v.all_value == ""


def test_device_info_line_escapes_and_skips_missing_location() -> None:
    d = Device(id="gas 1", type="gas_alarm", grid="G,1", district="东 城", unit="u=1",
               name='say "hi"', lat=30.5, lon=114.25, dma="DMA-1")
    assert device_info_line(d, 5) == (
        'lifeline_device_info,device=gas\\ 1,type=gas_alarm,grid=G\\,1,district=东\\ 城,'
        'unit=u\\=1,dma=DMA-1 enabled=1i,name="say \\"hi\\"",lat=30.5,lon=114.25 5')
    bare = device_info_line(Device(id="x", type="heat_pipe", enabled=False), 7)
    assert bare == 'lifeline_device_info,device=x,type=heat_pipe enabled=0i,name="x" 7'
    nan = device_info_line(Device(id="y", type="heat_pipe", lat=float("nan"), lon=1.0), 7)
    assert nan is not None and "lat=" not in nan


def test_service_line() -> None:
    assert service_line("serve 1", {"findings": 3, "evaluated_values": 10}, 9) == (
        "lifeline_service,host=serve\\ 1 evaluated_values=10i,findings=3i 9")
    with pytest.raises(ValueError, match="no counters"):
        service_line("h", {}, 1)


def test_device_info_feed_writes_on_start_change_and_period() -> None:
    devices = [Device(id="a", type="gas_alarm", lat=1.0, lon=2.0)]
    written: list[list[str]] = []
    feed = DeviceInfoFeed(lambda: list(devices), written.append, every_s=600)
    assert feed.maybe_write(now=0.0) == 1
    assert feed.maybe_write(now=10.0) == 0  # unchanged, not due
    devices.append(Device(id="b", type="drain_level"))
    assert feed.maybe_write(now=20.0) == 2  # the registry changed
    assert feed.maybe_write(now=700.0) == 2  # due again
    assert len(written) == 3 and written[1][1].startswith("lifeline_device_info,device=b,")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("url", "grafana.local:3000", "http:// or https://"),
    ("datasource_uid", "has space", "datasource_uid"),
    ("datasource_uid", "x" * 41, "datasource_uid"),
    ("timezone", "Mars/Olympus", "unknown time zone"),
    ("timeout", 0, "timeout"),
])
def test_grafana_settings_refuse_unsafe_values(key: str, value: object, message: str) -> None:
    from lifeline.errors import ConfigError
    from lifeline.settings import load_settings

    with pytest.raises(ConfigError, match=message):
        load_settings(grafana={key: value})


def test_grafana_settings_defaults() -> None:
    from lifeline.settings import load_settings

    g = load_settings(grafana={"url": "https://grafana.example/"}).grafana
    assert g.url == "https://grafana.example" and g.datasource_uid == "lifeline-influxdb"
    assert g.token.get_secret_value() == "" and g.timezone == "Asia/Shanghai"
