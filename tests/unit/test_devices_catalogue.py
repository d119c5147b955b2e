"""Device type catalogue: default limits, health expectations, event severities, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.catalogue import Catalogue, check_limits, parse_duration_s
from devices.errors import CatalogueError

EXPECTED_TYPES = {"gas_alarm", "gas_pipeline", "water_pressure", "water_flow", "water_quality",
                  "drain_level", "manhole_cover", "heat_pipe", "pump_station"}


def test_builtin_catalogue_has_every_type_with_limits_health_and_events() -> None:
    cat = Catalogue.builtin()
    assert set(cat.types) == EXPECTED_TYPES
    gas = cat["gas_alarm"]
    # GB/T 50493-2019: level 1 at 25 %LEL, level 2 at 50 %LEL
    assert gas.metrics["lel"].limits == {"high": 25.0, "high_high": 50.0}
    assert gas.metrics["battery"].limits["low"] == 3.3
    assert gas.metrics["rssi"].limits["low"] == -105.0
    assert gas.health.interval_s == 3600.0 and gas.health.offline_after == 3.0
    alarm = gas.event_spec("alarm")
    assert alarm is not None
    assert (alarm.severity_for(1), alarm.severity_for(2), alarm.severity_for(None)) == (
        "major", "critical", "major")
    assert alarm.severity_for(7) == "major"  # unmapped level: the event's own severity
    # every type has battery/rssi health limits and a default for every event kind
    for dtype in cat.types.values():
        assert dtype.metrics["battery"].limits["low"] == 3.3
        spec = dtype.event_spec("fault")
        assert spec is not None and spec.severity == "minor"
    assert cat["water_quality"].metrics["ph"].limits == {"low": 6.5, "high": 8.5}
    assert cat["manhole_cover"].event_spec("tamper") is not None


def test_operator_catalogue_extends_and_overrides(tmp_path: Path) -> None:
    extra = tmp_path / "types.toml"
    extra.write_text(
        '[gas_alarm]\n[gas_alarm.metrics.lel]\nunit = "%LEL"\nrange = [0, 100]\n'
        'limits = { high = 20.0, high_high = 40.0 }\n'
        '[gas_alarm.health]\ninterval = "10m"\noffline_after = 2\noffline_severity = "major"\n'
        '[gas_alarm.events]\nalarm = { severity = "critical" }\n'
        '[pump]\n[pump.metrics.speed]\nunit = "rpm"\nrange = [0, 5000]\n', encoding="utf-8")
    cat = Catalogue.load(extra, Catalogue.builtin())
    assert cat["gas_alarm"].metrics["lel"].limits["high"] == 20.0
    assert cat["gas_alarm"].health.interval_s == 600.0
    spec = cat["gas_alarm"].event_spec("alarm")
    assert spec is not None and spec.severity_for(2) == "critical"
    assert "pump" in cat and "water_flow" in cat
    assert cat["pump"].health.interval_s == 3600.0  # defaults when [health] is absent


@pytest.mark.parametrize(("body", "message"), [
    ('[t.metrics.m]\nunit = "u"\nrange = [0, 10]\nlimits = { high = 11 }\n', "outside the range"),
    ('[t.metrics.m]\nunit = "u"\nlimits = { high = 1, low = 2 }\n', "must not be above"),
    ('[t.metrics.m]\nunit = "u"\nlimits = { hi = 1 }\n', "unknown limit"),
    ('[t.metrics.m]\nunit = "u"\nlimits = { high = "x" }\n', "not a finite number"),
    ('[t.metrics.m]\nunit = "u"\nlimits = { high = nan }\n', "not a finite number"),
    ('[t.metrics.m]\nunit = "u"\nlimits = 3\n', "limits must be a table"),
    ('[t.metrics.m]\nunit = "u"\nrange = [5, 1]\n', "range must be"),
    ('[t.metrics.m]\nunit = "u"\nrange = [true, 1]\n', "range must be"),
    ('[t.metrics.m]\nunit = "u"\ncolour = 1\n', "unknown keys"),
    ('[t]\nfoo = 1\n[t.metrics.m]\nunit = "u"\n', "unknown keys"),
    ('[t.metrics.m]\nunit = "u"\n[t.health]\ninterval = "soon"\n', "interval"),
    ('[t.metrics.m]\nunit = "u"\n[t.health]\ninterval = "0s"\n', "interval"),
    ('[t.metrics.m]\nunit = "u"\n[t.health]\ninterval = "400d"\n', "interval"),
    ('[t.metrics.m]\nunit = "u"\n[t.health]\noffline_after = 0\n', "offline_after"),
    ('[t.metrics.m]\nunit = "u"\n[t.health]\noffline_severity = "huge"\n', "severity"),
    ('[t.metrics.m]\nunit = "u"\n[t.health]\nbeep = 1\n', "unknown keys"),
    ('[t.metrics.m]\nunit = "u"\n[t.events]\nexplode = { severity = "major" }\n',
     "unknown event type"),
    ('[t.metrics.m]\nunit = "u"\n[t.events]\nalarm = { severity = "loud" }\n', "severity"),
    ('[t.metrics.m]\nunit = "u"\n[t.events]\nalarm = "major"\n', "needs"),
    ('[t.metrics.m]\nunit = "u"\n[t.events]\nalarm = { severity = "major", levels = { x = '
     '"major" } }\n', "level"),
    ('[t.metrics.m]\nunit = "u"\n[t.events]\nalarm = { severity = "major", levels = { 1 = '
     '"hot" } }\n', "severity"),
])
def test_bad_catalogue_files_name_the_problem(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(CatalogueError, match=message) as info:
        Catalogue.load(path, Catalogue.builtin())
    assert str(path) in str(info.value)


def test_check_limits_merges_with_defaults_for_ordering() -> None:
    lel = Catalogue.builtin()["gas_alarm"].metrics["lel"]
    assert check_limits(lel, {"high": 20.0}) == []
    # an override above the default level-2 limit breaks the order
    assert any("must not be above" in p for p in check_limits(lel, {"high": 60.0}))
    assert any("outside the range" in p for p in check_limits(lel, {"high_high": 101}))
    assert any("not a finite" in p for p in check_limits(lel, {"high": True}))


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("15m", 900.0), ("1h", 3600.0), ("2d", 172800.0), ("250ms", 0.25),
    (60, 60.0), ("90", 90.0), (0.5, 0.5),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5s", "0", 0, -1, True, None, "31d", float("nan"),
                                  float("inf"), "1e400", [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s(text)
