"""The built-in water rules on hand-made pressure series: a spiking sensor opens no case,
a burst seen by two sensors of one grid does."""

from __future__ import annotations

import numpy as np

from devices.model import Device
from devices.series import SeriesTable
from lifeline.settings import builtin_rules_dir
from rules.engine import RuleEngine
from rules.loader import load_rules
from rules.model import FindingState, Severity

MIN = 60_000_000_000
T0 = 1_772_668_800 * 1_000_000_000
CASE_WORTHY = {Severity.WARNING, Severity.MINOR, Severity.MAJOR, Severity.CRITICAL}


class Cols:
    def __init__(self, rows: list[tuple[int, int, float]]) -> None:
        self.series = np.array([r[0] for r in rows], dtype=np.int64)
        self.ts_ns = np.array([r[1] for r in rows], dtype=np.int64)
        self.value = np.array([r[2] for r in rows], dtype=np.float64)


def fired(series: dict[str, list[float]]) -> list[tuple[str, str, Severity]]:
    """Firing findings of the built-in rules for per-minute pressure readings of
    loggers in grid G1, fed one minute at a time."""
    table = SeriesTable()
    ids = [table.id_for(Device(d, "water_pressure", grid="G1"), "pressure") for d in series]
    engine = RuleEngine(load_rules([builtin_rules_dir()]), table)
    out = []
    for minute in range(len(next(iter(series.values())))):
        rows = [(sid, T0 + minute * MIN, values[minute])
                for sid, values in zip(ids, series.values(), strict=True)]
        out += [(f.device_id, f.rule_id, f.severity) for f in engine.evaluate(Cols(rows))
                if f.state is FindingState.FIRING]
    return out


def test_a_sensor_spiking_for_two_readings_opens_no_case() -> None:
    spiky = [0.35] * 10 + [0.88, 0.87] + [0.35] * 10  # x2.5 for two readings, then back
    found = fired({"wp-1": spiky, "wp-2": [0.35] * 22})
    assert not [f for f in found if f[2] in CASE_WORTHY], found


def test_a_pressure_drop_at_two_sensors_of_a_grid_is_a_zone_drop() -> None:
    drop = [0.35] * 10 + [0.22] * 12  # -35 % within a minute, and it stays down
    found = fired({"wp-1": drop, "wp-2": drop, "wp-3": [0.35] * 22})
    assert ("wp-2", "water-pressure-drop-zone", Severity.MAJOR) in found
    alone = fired({"wp-1": drop, "wp-3": [0.35] * 22})  # one sensor: a hint, no case
    assert ("wp-1", "water-pressure-burst-drop", Severity.INFO) in alone
    assert not [f for f in alone if f[2] in CASE_WORTHY], alone
