"""``composite``: other rules' transitions combined per device or per grid.

A different layer from the other kinds: it reads findings (rare), not readings, so
it has no kernel and no per-series state but a :class:`CompositeTracker` (a plain
loop over findings is fine). Findings are fed in the engine's order: per batch, by
time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from devices.model import Device
from rules.kinds.base import FindingTracker, RuleKind
from rules.model import DurationNs, Finding, FindingState, RuleBase


class CompositeRule(RuleBase):
    """Combine other rules' findings on the same device or the same grid.

    ``all``: every listed rule fired within ``within`` of each other. ``any``: at least
    ``min_count`` firings of the listed rules within ``within``. Resolves when none of
    the listed rules is firing any more in that scope.
    """

    kind: Literal["composite"]
    all: tuple[str, ...] = ()
    any: tuple[str, ...] = ()
    scope: Literal["device", "grid"] = "device"
    within_ns: DurationNs = Field(default=600_000_000_000, alias="within", gt=0)
    min_count: int = Field(default=1, ge=1, le=10_000)

    @model_validator(mode="after")
    def _check(self) -> CompositeRule:
        if bool(self.all) == bool(self.any):
            raise ValueError("a composite rule needs exactly one of 'all' or 'any' (non-empty)")
        if self.for_ns or self.keep_firing_for_ns:
            raise ValueError("'for' and 'keep_firing_for' do not apply to composite rules")
        if self.all and self.min_count != 1:
            raise ValueError("'min_count' applies only to 'any'")
        return self

    @property
    def components(self) -> tuple[str, ...]:
        """The rule ids this composite combines."""
        return self.all or self.any


@dataclass
class _Scope:
    onsets: dict[str, int] = field(default_factory=dict)
    recent: deque[tuple[int, str, str]] = field(default_factory=deque)
    active: dict[str, set[str]] = field(default_factory=dict)
    firing: Finding | None = None


class CompositeTracker:
    """State of one composite rule: per scope key, recent onsets and firing members."""

    def __init__(self, rule: CompositeRule) -> None:
        self.rule = rule
        self.scopes: dict[str, _Scope] = {}
        self._components = frozenset(rule.components)

    def feed(self, f: Finding, device: Device) -> Finding | None:
        """Take one component transition; returns the composite's transition, if any."""
        if f.rule_id not in self._components or f.late:
            return None  # a late finding is an episode that is over: nothing to combine
        rule = self.rule
        if rule.device_types and device.type not in rule.device_types:
            return None
        key = device.id if rule.scope == "device" else device.grid
        if not key:
            return None
        sc = self.scopes.setdefault(key, _Scope())
        members = sc.active.setdefault(f.rule_id, set())
        if f.state is FindingState.FIRING:
            members.add(f.device_id)
            sc.onsets[f.rule_id] = f.ts_ns
            sc.recent.append((f.ts_ns, f.device_id, f.rule_id))
            while sc.recent and f.ts_ns - sc.recent[0][0] > rule.within_ns:
                sc.recent.popleft()
            if sc.firing is not None:
                return None
            if rule.all:
                met = all(c in sc.onsets and f.ts_ns - sc.onsets[c] <= rule.within_ns
                          for c in rule.all)
            else:
                met = len({(d, r) for t, d, r in sc.recent
                           if f.ts_ns - t <= rule.within_ns}) >= rule.min_count
            if met:
                sc.firing = Finding(rule.id, f.device_id, f.metric, f.state, rule.severity,
                                    f.ts_ns, f.value)
                return sc.firing
            return None
        members.discard(f.device_id)
        if sc.firing is not None and not any(sc.active.values()):
            fired = sc.firing
            out = Finding(fired.rule_id, fired.device_id, fired.metric, FindingState.RESOLVED,
                          fired.severity, f.ts_ns, f.value)
            sc.firing = None
            return out
        return None

    def firing_count(self) -> int:
        """How many scopes (devices or grids) are firing."""
        return sum(sc.firing is not None for sc in self.scopes.values())

    def dump(self) -> dict[str, Any]:
        """JSON-able state (for saving across restarts)."""
        return {
            key: {
                "onsets": sc.onsets,
                "recent": list(sc.recent),
                "active": {r: sorted(m) for r, m in sc.active.items()},
                "firing": None if sc.firing is None else [
                    sc.firing.device_id, sc.firing.metric, sc.firing.ts_ns, sc.firing.value],
            }
            for key, sc in self.scopes.items()
        }

    def load(self, data: dict[str, Any]) -> None:
        """Restore what :meth:`dump` wrote."""
        for key, d in data.items():
            sc = _Scope(onsets={str(k): int(v) for k, v in d["onsets"].items()},
                        recent=deque((int(t), str(dv), str(r)) for t, dv, r in d["recent"]),
                        active={str(r): set(m) for r, m in d["active"].items()})
            if d["firing"] is not None:
                dev, metric, ts, value = d["firing"]
                sc.firing = Finding(self.rule.id, str(dev), str(metric), FindingState.FIRING,
                                    self.rule.severity, int(ts), float(value))
            self.scopes[str(key)] = sc


class CompositeKind(RuleKind[CompositeRule]):
    """``composite``: combines findings of the rules it names."""

    name = "composite"
    model = CompositeRule

    def references(self, rule: CompositeRule) -> tuple[str, tuple[str, ...]]:
        """(``"all"`` or ``"any"``, the rule ids)."""
        return ("all" if rule.all else "any"), rule.components

    def tracker(self, rule: CompositeRule) -> FindingTracker:
        """A fresh :class:`CompositeTracker`."""
        return CompositeTracker(rule)


KIND = CompositeKind()
