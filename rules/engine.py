"""The rule engine: whole batches in, findings (transitions) out."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from devices.series import SeriesTable
from rules.model import Finding, FindingState, Readings, Rule
from rules.threshold import ThresholdState, threshold_kernel

log = logging.getLogger(__name__)


def in_order_rows(series: npt.NDArray[np.int64], ts: npt.NDArray[np.int64],
                  last_ts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Rows (sorted by series, then arrival) that are newer than everything before them.

    A reading is evaluated only if its time is after every earlier reading of its
    series (earlier batches via ``last_ts``, earlier rows of this batch by arrival).
    Late readings are stored but never rewind rule state.
    """
    n = series.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(series, kind="stable")
    s, t = series[order], ts[order]
    starts = np.ones(n, dtype=np.bool_)
    starts[1:] = s[1:] != s[:-1]
    seg = np.cumsum(starts) - 1
    _, rank = np.unique(t, return_inverse=True)
    key = seg * n + rank.astype(np.int64)
    prev_max = np.empty(n, dtype=np.int64)
    prev_max[0] = -1
    prev_max[1:] = np.maximum.accumulate(key)[:-1]
    newer_in_batch = starts | (key > prev_max)
    keep = newer_in_batch & (t > last_ts[s])
    rows: npt.NDArray[np.int64] = order[keep]
    return rows


class RuleEngine:
    """Evaluates rules on batches; keeps per-(series, rule) state in numpy arrays."""

    def __init__(self, rules: Sequence[Rule], series: SeriesTable) -> None:
        self.rules = list(rules)
        self.series = series
        self._states = [ThresholdState.sized(1024) for _ in self.rules]
        self._applies = [np.zeros(0, dtype=np.bool_) for _ in self.rules]
        self.evaluated = 0

    def _applicability(self, index: int) -> npt.NDArray[np.bool_]:
        """Which series rule ``index`` applies to (extended as new series appear)."""
        have = self._applies[index]
        total = len(self.series)
        if have.shape[0] < total:
            rule = self.rules[index]
            extra = np.array(
                [
                    (not rule.device_types or self.series.devices[s].type in rule.device_types)
                    and fnmatch.fnmatchcase(self.series.metrics[s], rule.metric)
                    for s in range(have.shape[0], total)
                ],
                dtype=np.bool_,
            )
            have = np.concatenate([have, extra])
            self._applies[index] = have
        return have

    def evaluate(self, batch: Readings) -> list[Finding]:
        """Evaluate every rule on ``batch``; returns transitions in time order."""
        findings: list[Finding] = []
        if batch.series.shape[0] == 0:
            return findings
        self.evaluated += int(batch.series.shape[0])
        for index, rule in enumerate(self.rules):
            applies = self._applicability(index)
            mask = applies[batch.series]
            if not mask.any():
                continue
            series, ts, value = batch.series[mask], batch.ts_ns[mask], batch.value[mask]
            state = self._states[index]
            state.grow(len(self.series))
            rows = in_order_rows(series, ts, state.last_ts)
            s, t, v = series[rows], ts[rows], value[rows]
            changed, firing = threshold_kernel(rule, state, s, t, v)
            for row, fire in zip(changed.tolist(), firing.tolist(), strict=True):
                sid = int(s[row])
                device = self.series.devices[sid]
                findings.append(
                    Finding(
                        rule_id=rule.id,
                        device_id=device.id,
                        metric=self.series.metrics[sid],
                        state=FindingState.FIRING if fire else FindingState.RESOLVED,
                        severity=rule.severity,
                        ts_ns=int(t[row]),
                        value=float(v[row]),
                    )
                )
        findings.sort(key=lambda f: f.ts_ns)
        return findings
