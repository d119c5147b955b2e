"""The rule-kind registry: a kind is one module; a new kind needs no engine change."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from devices.model import Device
from devices.series import SeriesTable
from rules.engine import RuleEngine
from rules.kernels import (
    LATCH_FIELDS,
    PREV_FIELDS,
    FieldSpec,
    Segments,
    SeriesState,
    Transitions,
    latched,
    prev_reading,
)
from rules.kinds import KINDS, ThresholdRule, kind_of
from rules.kinds.base import F64, I64, Env, Latch, Out, RefEnv, RuleKind
from rules.loader import parse_rules
from rules.model import Finding, RuleBase, rule_fingerprint
from rules.reference import ReferenceEngine

SEC = 1_000_000_000


def test_every_kind_lives_in_its_own_module() -> None:
    assert set(KINDS) == {"threshold", "rate", "zscore", "seasonal", "changepoint", "flatline",
                          "stale", "mnf", "multivariate", "composite"}
    for name, kind in KINDS.items():
        assert kind.name == name
        assert type(kind).__module__ == f"rules.kinds.{name}"
        assert kind.model.__module__ == f"rules.kinds.{name}"
        assert kind.model.model_fields["kind"].annotation == Literal[name]


def test_fingerprints_keep_their_field_order() -> None:
    """Saved state is keyed by fingerprint: the refactor must not change them."""
    rule = parse_rules('[[rule]]\nid = "hi"\nmetric = "lel"\nabove = 20.0\n', source="t")[0]
    assert isinstance(rule, ThresholdRule)
    assert rule_fingerprint(rule) == (
        '{"id":"hi","description":"","device_types":[],"metric":"lel","severity":"warning",'
        '"for_ns":0,"keep_firing_for_ns":0,"kind":"threshold","above":20.0,"below":null,'
        '"clear":null,"limit":null}')


def test_series_state_takes_fields_of_any_shape() -> None:
    state = SeriesState({"slots": (np.float64, np.nan, (3, 2)), "n": (np.int64, 0, 0)}, 2)
    assert state["slots"].shape == (2, 3, 2)
    state["slots"][1, 2, 1] = 5.0
    state.grow(70)
    assert state["slots"].shape[1:] == (3, 2) and state["slots"].shape[0] >= 70
    assert state["slots"][1, 2, 1] == 5.0 and math.isnan(float(state["slots"][69, 0, 0]))


# ---------------------------------------------------------------- a kind defined here


class JumpRule(RuleBase):
    """Fire when a value moved by at least ``jump`` since the series' previous reading;
    reads every metric of ``metrics`` (a multi-metric input)."""

    kind: Literal["jump"]
    metrics: tuple[str, ...]
    jump: float


@dataclass
class JumpRef:
    latch: Latch = field(default_factory=Latch)
    seen: bool = False
    last_v: float = 0.0


class JumpKind(RuleKind[JumpRule]):
    name = "jump"
    model = JumpRule

    def applies(self, rule: JumpRule, device_type: str, metric: str) -> bool:
        return metric in rule.metrics

    def state_fields(self, rule: JumpRule) -> dict[str, FieldSpec]:
        return {**LATCH_FIELDS, **PREV_FIELDS}

    def kernel(self, rule: JumpRule, env: Env, series: I64, ts: I64, value: F64
               ) -> Transitions:
        seg = Segments.of(series)
        has, _, pv = prev_reading(env.state, series, ts, value, seg)
        moved = np.abs(value - pv) >= rule.jump
        return latched(env.state, rule, series, ts, value, has & moved, has & ~moved, seg)

    def ref_state(self, rule: JumpRule) -> Any:
        return JumpRef()

    def ref_step(self, rule: JumpRule, st: Any, t: int, v: float, env: RefEnv) -> list[Out]:
        moved = abs(v - st.last_v) >= rule.jump
        seen, st.seen, st.last_v = st.seen, True, v
        return list(st.latch.step(rule, t, seen and moved, seen and not moved, v))


class Cols:
    def __init__(self, rows: list[tuple[int, int, float]]) -> None:
        self.series = np.array([r[0] for r in rows], dtype=np.int64)
        self.ts_ns = np.array([r[1] for r in rows], dtype=np.int64)
        self.value = np.array([r[2] for r in rows], dtype=np.float64)


def _canon(findings: list[Finding]) -> list[tuple[Any, ...]]:
    return [(f.rule_id, f.device_id, f.metric, f.state.value, f.ts_ns, f.value, f.late)
            for f in findings]


def _table() -> SeriesTable:
    table = SeriesTable()
    for d in range(3):
        for metric in ("flow", "pressure", "battery"):
            table.id_for(Device(f"d{d}", "water_meter"), metric)
    return table


def _batches() -> list[list[tuple[int, int, float]]]:
    rng = np.random.default_rng(7)
    out = []
    t = 1_767_225_600 * SEC
    for _ in range(6):
        rows = []
        for _ in range(40):
            t += SEC
            sid = int(rng.integers(0, 9))
            value = float(rng.choice([1.0, 1.1, 4.0, math.nan]))
            rows.append((sid, t - int(rng.integers(0, 3)) * 5 * SEC, value))  # some late
        out.append(rows)
    return out


def test_a_new_kind_needs_only_its_module_and_a_registry_entry(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(KINDS, "jump", JumpKind())
    rules = parse_rules('[[rule]]\nid = "j"\nkind = "jump"\nmetrics = ["flow", "pressure"]\n'
                        'jump = 2.0\n', source="t")
    assert isinstance(rules[0], JumpRule) and kind_of(rules[0]).name == "jump"
    table = _table()
    engine = RuleEngine(rules, table, timezone="UTC")
    reference = ReferenceEngine(rules, table, timezone="UTC")
    batches = _batches()
    got: list[Finding] = []
    for rows in batches[:3]:
        found = engine.evaluate(Cols(rows))
        assert _canon(found) == _canon(reference.evaluate(rows))
        got += found
    # its state is saved and restored like any kind's
    engine.save_state(tmp_path / "state.npz")
    restored = RuleEngine(rules, table, timezone="UTC")
    devices = {d.id: d for d in table.devices}
    assert restored.restore_state(tmp_path / "state.npz", devices.get) == 9
    for rows in batches[3:]:
        found = restored.evaluate(Cols(rows))
        assert _canon(found) == _canon(reference.evaluate(rows))
        got += found
    assert {f.state.value for f in got} == {"firing", "resolved"}
    assert {f.metric for f in got} == {"flow", "pressure"}  # battery is not its input
