"""Anomaly likelihood: a raw score judged against the series' own recent scores.

Numenta NAB style, with EWMAs instead of windows (constant state per series): the
long-run mean and variance of the scores (half-life :data:`LONG_HALFLIFE` scores)
and a short average (half-life :data:`SHORT_HALFLIFE`) of the latest ones. The
likelihood is the Gaussian tail ``Phi((short - mean) / std)``; a rule with
``likelihood = p`` fires when it reaches ``p`` and resolves below
``1 - 10 * (1 - p)`` (at least 0.5). One setting then works on quiet and noisy
series alike: what counts is how unusual the score is *for this series*.

API (any statistical kind, e.g. ``multivariate``): add :data:`LIKELIHOOD_FIELDS` to
the rule's state fields; in the kernel call :func:`likelihood_kernel` with the raw
score of each row (NaN: not judged, the likelihood state does not move) and turn the
result into latch events with :func:`likelihood_events`; in the reference keep a
:class:`LikelihoodRef` per series and call :func:`likelihood_step` per reading.
The score should be >= 0 and grow with the anomaly (e.g. ``|z|``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from rules.filters import Groups, ewma_alpha, ewma_step, grouped_ewma, subgroups
from rules.kernels import FieldSpec, SeriesState

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

LONG_HALFLIFE = 2000
"""Half-life (scores) of the long-run mean and variance of the scores."""
SHORT_HALFLIFE = 3
"""Half-life (scores) of the short average that is judged."""
MIN_SCORES = 100
"""Scores seen before the likelihood judges."""
MIN_STD = 0.01
"""Floor of the scores' standard deviation (scores are in units of sigma)."""

LIKELIHOOD_FIELDS: dict[str, FieldSpec] = {
    "lk_n": (np.int64, 0, 0),
    "lk_mean": (np.float64, 0.0, 0),
    "lk_sq": (np.float64, 0.0, 0),
    "lk_short": (np.float64, 0.0, 0),
}
"""Per-series state of the likelihood (add to the kind's state fields)."""


@lru_cache(maxsize=256)
def _limits(p: float) -> tuple[float, float]:
    """(x at which the likelihood reaches ``p``, x below which it has cleared)."""
    clear = max(0.5, 1.0 - 10.0 * (1.0 - p))
    return NormalDist().inv_cdf(p), NormalDist().inv_cdf(clear)


def likelihood_of(x: float) -> float:
    """The likelihood of a standardised short average ``x`` (for display)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def likelihood_kernel(state: SeriesState, score: F64, groups: Groups, heads: I64) -> F64:
    """Standardised short average ``x`` of each row (NaN: not judged), updating the
    state. Rows are grouped by series (``groups``; ``heads``: each group's series id),
    in time order."""
    x_out = np.full(score.shape[0], np.nan)
    idx, sstart, sg = subgroups(~np.isnan(score), groups.start)
    if not idx.shape[0]:
        return x_out
    sub = Groups.of(sstart, idx.shape[0])
    s = score[idx]
    sid = heads[sg]
    n0 = state["lk_n"][sid]
    n = n0[sub.gid] + sub.rank
    al, ash = ewma_alpha(LONG_HALFLIFE), ewma_alpha(SHORT_HALFLIFE)
    short_before, short_fin = grouped_ewma(s, sub, state["lk_short"][sid], n, ash)
    both = np.stack([s, s * s], axis=1)
    nn = np.stack([n, n], axis=1)
    y0 = np.stack([state["lk_mean"][sid], state["lk_sq"][sid]], axis=1)
    long_before, long_fin = grouped_ewma(both, sub, y0, nn, al)
    mean_before, sq_before = long_before[:, 0], long_before[:, 1]
    w = np.maximum(ash, 1.0 / (n + 1.0))
    short = w * s + (1.0 - w) * short_before
    std = np.maximum(np.sqrt(np.maximum(sq_before - mean_before * mean_before, 0.0)), MIN_STD)
    x_out[idx] = np.where(n >= MIN_SCORES, (short - mean_before) / std, np.nan)
    state["lk_n"][sid] = n0 + sub.length
    state["lk_short"][sid] = short_fin
    state["lk_mean"][sid] = long_fin[:, 0]
    state["lk_sq"][sid] = long_fin[:, 1]
    return x_out


def likelihood_events(x: F64, p: float) -> tuple[B, B]:
    """(set, reset) of each standardised short average for ``likelihood = p``."""
    on, off = _limits(p)
    known = ~np.isnan(x)
    xx = np.where(known, x, 0.0)
    return known & (xx >= on), known & (xx < off)


@dataclass
class LikelihoodRef:
    """Reference likelihood state of one series."""

    n: int = 0
    mean: float = 0.0
    sq: float = 0.0
    short: float = 0.0


def likelihood_step(st: LikelihoodRef, score: float | None, p: float) -> tuple[bool, bool]:
    """One score (None: not judged) → (set, reset) for ``likelihood = p``."""
    if score is None:
        return False, False
    al, ash = ewma_alpha(LONG_HALFLIFE), ewma_alpha(SHORT_HALFLIFE)
    n = st.n
    st.short = ewma_step(ash, st.short, n, score)
    std = max(math.sqrt(max(st.sq - st.mean * st.mean, 0.0)), MIN_STD)
    x = (st.short - st.mean) / std
    st.mean = ewma_step(al, st.mean, n, score)
    st.sq = ewma_step(al, st.sq, n, score * score)
    st.n = n + 1
    if n < MIN_SCORES:
        return False, False
    on, off = _limits(p)
    return x >= on, x < off


def z_limit_events(zs: F64, z: float, clear: float, direction: str) -> tuple[B, B]:
    """(set, reset) of each z (NaN: neither) for limit ``z``, hysteresis ``clear`` and
    ``direction`` (both/up/down): the events of a kind without ``likelihood``."""
    known = ~np.isnan(zs)
    zz = np.where(known, zs, 0.0)
    if direction == "up":
        set_ev, reset_ev = zz >= z, zz < clear
    elif direction == "down":
        set_ev, reset_ev = zz <= -z, zz > -clear
    else:
        set_ev, reset_ev = np.abs(zz) >= z, np.abs(zz) < clear
    return known & set_ev, known & reset_ev


def ref_z_limit_events(zv: float | None, z: float, clear: float, direction: str
                       ) -> tuple[bool, bool]:
    """:func:`z_limit_events` of one z (None: not judged)."""
    if zv is None:
        return False, False
    if direction == "up":
        return zv >= z, zv < clear
    if direction == "down":
        return zv <= -z, zv > -clear
    return abs(zv) >= z, abs(zv) < clear


def z_anomaly_score(zs: F64, direction: str) -> F64:
    """The raw anomaly score of each z for the likelihood: |z|, or its part in the
    rule's ``direction`` (up/down; 0 against it); NaN stays NaN (not judged)."""
    if direction == "up":
        out: F64 = np.where(np.isnan(zs), zs, np.maximum(zs, 0.0))
    elif direction == "down":
        out = np.where(np.isnan(zs), zs, np.maximum(-zs, 0.0))
    else:
        out = np.abs(zs)
    return out
