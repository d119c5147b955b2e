"""After a crash the rule state is aligned with the open alerts (found by the soak: an
alert firing when the service was SIGKILLed never resolved, the restored state was older)."""

from __future__ import annotations

import numpy as np

from devices.model import Device
from devices.series import SeriesTable
from rules.engine import RuleEngine
from rules.loader import parse_rules
from rules.model import Finding

SEC = 1_000_000_000
T0 = 1_767_225_600 * SEC
RULE = """
[[rule]]
id = "lel-high"
device_types = ["gas_alarm"]
metric = "lel"
above = 50.0
clear = 45.0
severity = "critical"
"""
DEV = Device("gas-1", "gas_alarm")


class Cols:
    def __init__(self, sid: int, start: int, values: list[float]) -> None:
        self.series = np.full(len(values), sid, dtype=np.int64)
        self.ts_ns = np.array([T0 + (start + i) * SEC for i in range(len(values))],
                              dtype=np.int64)
        self.value = np.array(values, dtype=np.float64)


def engine() -> tuple[RuleEngine, int]:
    table = SeriesTable()
    sid = table.id_for(DEV, "lel")
    return RuleEngine(parse_rules(RULE, source="test"), table), sid


def states(findings: list[Finding]) -> list[str]:
    return [f.state.value for f in findings]


def lookup(device_id: str) -> Device | None:
    return DEV if device_id == DEV.id else None


def test_open_alert_unknown_to_the_state_resolves_on_the_next_clear_reading() -> None:
    eng, sid = engine()
    assert eng.evaluate(Cols(sid, 0, [4.0, 4.0])) == []  # a fresh (stale) state
    assert eng.sync_firing([("lel-high", "gas-1", "lel")], lookup) == 1
    assert states(eng.evaluate(Cols(sid, 2, [4.0]))) == ["resolved"]
    assert eng.sync_firing([], lookup) == 0


def test_state_firing_without_an_open_alert_fires_again() -> None:
    eng, sid = engine()
    assert states(eng.evaluate(Cols(sid, 0, [62.0]))) == ["firing"]
    assert eng.evaluate(Cols(sid, 1, [63.0])) == []
    assert eng.sync_firing([], lookup) == 1  # the alert was resolved meanwhile
    assert states(eng.evaluate(Cols(sid, 2, [64.0]))) == ["firing"]


def test_unknown_devices_and_rules_are_ignored() -> None:
    eng, _ = engine()
    assert eng.sync_firing([("lel-high", "nobody", "lel"), ("other", "gas-1", "lel")],
                           lookup) == 0


def test_stale_rule_open_alert_resolves_on_the_next_reading() -> None:
    table = SeriesTable()
    sid = table.id_for(DEV, "lel")
    stale = '[[rule]]\nid = "s"\nkind = "stale"\nmetric = "lel"\nafter = "2h"\n'
    eng = RuleEngine(parse_rules(stale, source="test"), table)
    assert eng.evaluate(Cols(sid, 0, [1.0])) == []
    assert eng.sync_firing([("s", "gas-1", "lel")], lookup) == 1
    assert states(eng.evaluate(Cols(sid, 60, [1.0]))) == ["resolved"]
