"""The rule kinds: one module each, registered in :data:`KINDS`.

The engine (:mod:`rules.engine`), the reference (:mod:`rules.reference`) and the
loader (:mod:`rules.loader`) reach every kind through this table and the
:class:`~rules.kinds.base.RuleKind` protocol. Adding a kind: a new module here with
its rule model and ``KIND``, one line below, and its tests.
"""

from __future__ import annotations

from typing import Any

from rules.kinds import (
    changepoint,
    composite,
    flatline,
    mnf,
    multivariate,
    rate,
    seasonal,
    stale,
    threshold,
    zscore,
)
from rules.kinds.base import RuleKind
from rules.kinds.changepoint import ChangepointRule
from rules.kinds.composite import CompositeRule
from rules.kinds.flatline import FlatlineRule
from rules.kinds.mnf import MnfRule
from rules.kinds.multivariate import MultivariateRule
from rules.kinds.rate import RateRule
from rules.kinds.seasonal import SeasonalRule
from rules.kinds.stale import StaleRule
from rules.kinds.threshold import ThresholdRule
from rules.kinds.zscore import ZscoreRule
from rules.model import RuleBase

KINDS: dict[str, RuleKind[Any]] = {
    k.name: k
    for k in (threshold.KIND, rate.KIND, zscore.KIND, seasonal.KIND, changepoint.KIND,
              flatline.KIND, stale.KIND, mnf.KIND, multivariate.KIND, composite.KIND)
}
"""Every kind by its ``kind`` value in rule files (file order of the docs)."""


def kind_of(rule: RuleBase) -> RuleKind[Any]:
    """The kind of a loaded rule."""
    return KINDS[rule.kind]


__all__ = [
    "KINDS",
    "ChangepointRule",
    "CompositeRule",
    "FlatlineRule",
    "MnfRule",
    "MultivariateRule",
    "RateRule",
    "RuleKind",
    "SeasonalRule",
    "StaleRule",
    "ThresholdRule",
    "ZscoreRule",
    "kind_of",
]
