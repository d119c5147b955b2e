"""The notification routing table: severity x device type x grid x time of day -> channels
(and when), quiet hours with the critical override, escalation steps, and the settings
that describe it."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from alerts.notify.routing import NotifyRoute, Router, parse_quiet
from lifeline.notify_settings import NotifySettings
from lifeline.notifying import router as router_from_settings

TZ = ZoneInfo("Asia/Shanghai")
S = 1_000_000_000
ANY_ALERT = frozenset({"alert.firing", "alert.resolved"})
ROUTES = [
    NotifyRoute(channels=("gas-group",), events=ANY_ALERT, min_severity="critical",
                device_types=("gas_*",)),
    NotifyRoute(channels=("water-group",), events=ANY_ALERT, min_severity="major",
                device_types=("water_*",), grids=("W*",), quiet=parse_quiet("22:00-07:00")),
    NotifyRoute(channels=("binjiang-mail",), events=frozenset({"alert.firing"}),
                min_severity="warning", districts=("滨江区",), units=("燃气公司",)),
    NotifyRoute(channels=("duty-sms",), events=ANY_ALERT, min_severity="critical",
                device_types=("gas_*",), after_ns=300 * S, after="5m"),
]


def at(hhmm: str) -> int:
    h, m = map(int, hhmm.split(":"))
    return int(datetime(2026, 12, 7, h, m, tzinfo=TZ).timestamp()) * S


def event(severity: str, dtype: str, grid: str, district: str = "",
          unit: str = "") -> dict[str, object]:
    return {"alert": {"id": 1, "severity": severity, "device_type": dtype, "grid": grid,
                      "district": district, "unit": unit}, "case": None}


# (event, severity, type, grid, district, unit, local time) -> {channel: delay or "HH:MM"}
TABLE = [
    ("alert.firing", "critical", "gas_alarm", "G1", "", "", "10:00",
     {"gas-group": 0, "duty-sms": 300}),
    ("alert.firing", "critical", "gas_alarm", "G1", "", "", "03:00",
     {"gas-group": 0, "duty-sms": 300}),  # no quiet hours on these routes
    ("alert.resolved", "critical", "gas_alarm", "G1", "", "", "10:00",
     {"gas-group": 0}),  # a resolution is never an escalation step
    ("alert.firing", "major", "gas_alarm", "G1", "", "", "10:00", {}),
    ("alert.firing", "major", "water_pressure", "W2", "", "", "10:00", {"water-group": 0}),
    ("alert.firing", "major", "water_pressure", "W2", "", "", "23:30",
     {"water-group": "07:00"}),  # held until the quiet hours end (next morning)
    ("alert.firing", "major", "water_pressure", "W2", "", "", "06:59",
     {"water-group": "07:00"}),
    ("alert.firing", "major", "water_pressure", "W2", "", "", "07:00", {"water-group": 0}),
    ("alert.firing", "critical", "water_pressure", "W2", "", "", "23:30",
     {"water-group": 0}),  # critical overrides the quiet hours
    ("alert.firing", "major", "water_pressure", "G1", "", "", "10:00", {}),  # grid G1
    ("alert.firing", "minor", "water_pressure", "W2", "", "", "10:00", {}),  # below major
    ("alert.firing", "warning", "gas_alarm", "G1", "滨江区", "燃气公司", "10:00",
     {"binjiang-mail": 0}),
    ("alert.firing", "warning", "gas_alarm", "G1", "滨江区", "水务集团", "10:00", {}),
    ("alert.resolved", "warning", "gas_alarm", "G1", "滨江区", "燃气公司", "10:00", {}),
    ("alert.firing", "critical", "gas_alarm", "G1", "滨江区", "燃气公司", "10:00",
     {"gas-group": 0, "binjiang-mail": 0, "duty-sms": 300}),
]


@pytest.mark.parametrize(("ev", "sev", "dtype", "grid", "district", "unit", "time", "want"),
                         TABLE)
def test_routing_table(ev: str, sev: str, dtype: str, grid: str, district: str, unit: str,
                       time: str, want: dict[str, object]) -> None:
    now = at(time)
    got = Router(ROUTES).targets(ev, event(sev, dtype, grid, district, unit), now)
    shown: dict[str, object] = {}
    for t in got:
        if t.notify["quiet_held"]:
            shown[t.target] = datetime.fromtimestamp(t.due_ns / S, TZ).strftime("%H:%M")
        else:
            shown[t.target] = (t.due_ns - now) // S
    assert shown == want
    for t in got:
        assert t.notify["escalation"] == (t.target == "duty-sms")
        assert t.key_suffix == ("#esc3" if t.target == "duty-sms" else "")


def test_a_channel_gets_one_row_per_event_and_immediate_wins() -> None:
    routes = [NotifyRoute(channels=("x",), events=ANY_ALERT, after_ns=60 * S, after="1m"),
              NotifyRoute(channels=("x",), events=ANY_ALERT)]
    (only,) = Router(routes).targets("alert.firing", event("major", "gas", "G"), at("10:00"))
    assert only.due_ns == at("10:00") and not only.notify["escalation"]


def test_settings_build_the_same_router() -> None:
    n = NotifySettings.model_validate({
        "channels": [{"name": "gas-group", "type": "wecom",
                      "url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k"},
                     {"name": "duty-sms", "type": "sms", "url": "https://sms.example/send",
                      "body": "{{ text }}"}],
        "routes": [{"channels": ["gas-group"], "min_severity": "critical",
                    "device_types": ["gas_*"], "events": ["alert.firing"]},
                   {"channels": ["duty-sms"], "min_severity": "critical",
                    "device_types": ["gas_*"], "events": ["alert.firing"], "after": "5m"}]})
    got = router_from_settings(n).targets("alert.firing", event("critical", "gas_alarm", "G"),
                                          at("10:00"))
    assert {(t.target, (t.due_ns - at("10:00")) // S) for t in got} == {
        ("gas-group", 0), ("duty-sms", 300)}


@pytest.mark.parametrize(("doc", "message"), [
    ({"routes": [{"channels": ["nope"]}]}, "unknown channel 'nope'"),
    ({"channels": [{"name": "a", "type": "wecom", "url": "ftp://x"}]}, "url must start"),
    ({"channels": [{"name": "a", "type": "email", "host": "smtp"}]}, "needs host, sender"),
    ({"channels": [{"name": "a", "type": "wecom", "url": "https://x", "rate_limit": ["x"]}]},
     "COUNT/WINDOW"),
    ({"routes": [], "link_secret": "short"}, "at least 16"),
    ({"channels": [{"name": "a", "type": "feishu", "url": "https://x"}],
      "routes": [{"channels": ["a"], "quiet_hours": "22-7"}]}, "HH:MM-HH:MM"),
    ({"channels": [{"name": "a", "type": "feishu", "url": "https://x"}],
      "routes": [{"channels": ["a"], "events": ["alert.fired"]}]}, "unknown event"),
])
def test_settings_are_validated_at_start_up(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NotifySettings.model_validate(doc)
