"""``multivariate``: one device's metrics judged jointly (PCA: Hotelling T² and SPE/Q).

An *observation* is the device's readings at one time: every listed metric, each the
latest reading at or before that time, carried forward for at most ``max_gap``. An
observation with a metric missing (never seen, or older than ``max_gap``) is skipped:
it neither trains nor scores nor changes the alarm. An observation at time ``T`` is
evaluated when the device's first reading after ``T`` arrives (the readings of one
message may come in several batches): findings are dated ``T``, one reading later.

Learning takes the first ``train`` complete observations (a count, or a duration).
The first half fits the model: mean, standard deviation and correlation matrix of
the standardised metrics, its principal components, ``components`` of them kept
(default: the fewest that explain 99 % of the variance, at most all but one; their
eigenvalues shrunk toward 1 by ``shrinkage`` for a steady T²). Each observation is
scored by Hotelling's T² on the kept components and by SPE (Q, the squared residual
off them). The limits are the parametric ones at ``quantile`` (T²: the F
approximation ``k(n²-1)/(n(n-k))·F(k, n-k)``; SPE: Box's ``g·χ²(h)`` with
``g = θ₂/θ₁``, ``h = θ₁²/θ₂`` of the dropped eigenvalues) or, where larger, the
largest T² and SPE of the second half of ``train``, scored out of sample: real
recordings have heavier tails than the Gaussian the parametric limits assume; both
times ``margin`` (1.25: scores of a model fitted on a finite sample run higher out
of sample). Then the model is frozen. The finding's value is
``max(T²/limit, SPE/limit)``: it sets at 1 and resets below ``clear``; its ``detail``
names the statistic and the metrics contributing most.

State lives at the series of the device's first listed metric (the *anchor*; findings
are reported on it too); each series keeps its own latest reading.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from common.duration import Duration
from devices.model import Device
from rules.filters import Groups
from rules.kernels import (
    LATCH_FIELDS,
    FieldSpec,
    Segments,
    Transitions,
    empty_transitions,
    ffill_index,
    latch,
)
from rules.kinds.base import F64, I64, NEVER, Arr, Env, Latch, Out, RefEnv, RuleKind
from rules.likelihood import (
    LIKELIHOOD_FIELDS,
    LikelihoodRef,
    likelihood_events,
    likelihood_kernel,
    likelihood_step,
)
from rules.model import DurationNs, Finite, RuleBase

log = logging.getLogger(__name__)

AUTO_VARIANCE = 0.99
"""Without ``components``: keep the fewest components explaining this share."""
TOP = 3
"""Metrics named in a finding's ``detail``."""


class MultivariateRule(RuleBase):
    """Fire when a device's metrics together leave the joint pattern learned in training.

    ``metrics``: the input metrics (2 to 32). ``train``: observations (a number) or a
    duration of training. ``components``: principal components kept (default: 99 % of
    the variance). ``quantile``: confidence of the T² and SPE limits. ``clear``: share
    of the limit below which a firing device resolves. ``max_gap``: how long a metric's
    last reading stands in for a missing one. ``shrinkage``: weight of the identity in
    the kept eigenvalues (T² weights). ``min_std``: floor of each metric's standard
    deviation. ``margin``: factor on both limits. ``likelihood``: fire on the anomaly
    likelihood of the score instead (:mod:`rules.likelihood`) at this level, e.g. 0.9999.
    """

    kind: Literal["multivariate"]
    metrics: tuple[str, ...] = Field(min_length=2, max_length=32)
    train: int | Duration = 400
    components: int | None = Field(default=None, ge=1, le=32)
    quantile: Finite = Field(default=0.999, gt=0.5, lt=1.0)
    clear: Finite = Field(default=0.8, gt=0.0, le=1.0)
    max_gap_ns: DurationNs = Field(default=600_000_000_000, alias="max_gap")
    shrinkage: Finite = Field(default=0.01, ge=0.0, le=1.0)
    min_std: Finite = Field(default=0.0, ge=0.0)
    margin: Finite = Field(default=1.25, ge=1.0, le=100.0)
    likelihood: Finite | None = Field(default=None, gt=0.5, lt=1.0)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not 1 <= len(name) <= 100:
                raise ValueError("metric names are 1 to 100 characters")
        if len(set(v)) != len(v):
            raise ValueError("'metrics' lists a metric twice")
        return v

    @field_validator("train", mode="before")
    @classmethod
    def _train(cls, v: object) -> int | Duration:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError("train is a number of observations or a duration like '1d'")
        if isinstance(v, int):
            if not 1 <= v <= 1_000_000:
                raise ValueError("train in observations must be between 1 and 1000000")
            return v
        train = Duration(v)
        if train.ns <= 0:
            raise ValueError("train must be > 0")
        return train

    @model_validator(mode="after")
    def _check(self) -> MultivariateRule:
        if self.metric != "*":
            raise ValueError("a multivariate rule lists its inputs in 'metrics', not 'metric'")
        m = len(self.metrics)
        if isinstance(self.train, int) and self.train < 2 * min_train(m):
            raise ValueError(f"train must be at least {2 * min_train(m)} observations "
                             f"(4 × metrics + 4) for {m} metrics")
        if self.components is not None and self.components > m:
            raise ValueError("'components' must be at most the number of metrics")
        return self


def min_train(m: int) -> int:
    """The fewest observations that fit a model of ``m`` metrics (half of ``train``)."""
    return 2 * m + 2


# ---------------------------------------------------------------- model (shared)


def mv_fields(rule: MultivariateRule) -> dict[str, FieldSpec]:
    """Per-series state: the latest reading; at the anchor, the device's model."""
    m = len(rule.metrics)
    extra = LIKELIHOOD_FIELDS if rule.likelihood is not None else {}
    return {
        **LATCH_FIELDS, **extra,
        "cur_t": (np.int64, NEVER, 0), "cur_v": (np.float64, 0.0, 0),
        "pend_t": (np.int64, NEVER, 0),
        "count": (np.int64, 0, 0), "first_t": (np.int64, 0, 0),
        "shift": (np.float64, 0.0, m), "s1": (np.float64, 0.0, m),
        "s2": (np.float64, 0.0, (m, m)),
        "fitted": (np.bool_, False, 0), "trained": (np.bool_, False, 0),
        "cmax_t2": (np.float64, 0.0, 0), "cmax_q": (np.float64, 0.0, 0),
        "mu": (np.float64, 0.0, m), "sd": (np.float64, 1.0, m),
        "vec": (np.float64, 0.0, (m, m)), "w": (np.float64, 0.0, m),
        "res": (np.float64, 0.0, m),
        "t2lim": (np.float64, np.inf, 0), "qlim": (np.float64, np.inf, 0),
    }


def colsum(x: F64) -> F64:
    """Sum over the last axis, column by column (the same floats for any batch size)."""
    acc = x[..., 0].copy()
    for j in range(1, x.shape[-1]):
        acc += x[..., j]
    return acc


def train_step(rule: MultivariateRule, st: Mapping[str, Arr], a: I64, t: I64, x: F64) -> None:
    """One complete observation per device ``a`` (distinct) of devices still learning.

    The first half of ``train`` goes into the training sums; at its end the model is
    fitted (:func:`fit`). The second half is scored against that model and the largest
    T² and SPE seen become the limits where they exceed the F/Box limits.
    """
    count, first_t, fitted = st["count"], st["first_t"], st["fitted"]
    c = count[a]
    n = c + 1
    count[a] = n
    fit_now = ~fitted[a]
    if fit_now.any():
        fa, fx, fc = a[fit_now], x[fit_now], c[fit_now]
        first = fc == 0
        if first.any():
            st["shift"][fa[first]] = fx[first]
            first_t[fa[first]] = t[fit_now][first]
        y = fx - st["shift"][fa]
        st["s1"][fa] = st["s1"][fa] + y
        st["s2"][fa] = st["s2"][fa] + y[:, :, None] * y[:, None, :]
        fn, ft = n[fit_now], t[fit_now]
        if isinstance(rule.train, int):
            done = fn >= rule.train // 2
        else:
            done = (fn >= min_train(len(rule.metrics))) & (
                2 * (ft - first_t[fa]) >= rule.train.ns)
        if done.any():
            fit(rule, st, fa[done])
    cal = ~fit_now
    if cal.any():
        ca, cx, cn, ct = a[cal], x[cal], n[cal], t[cal]
        _, t2, spe = score(st, ca, cx)
        st["cmax_t2"][ca] = np.maximum(st["cmax_t2"][ca], t2)
        st["cmax_q"][ca] = np.maximum(st["cmax_q"][ca], spe)
        if isinstance(rule.train, int):
            done = cn >= rule.train
        else:
            done = ct - first_t[ca] >= rule.train.ns
        if done.any():
            da = ca[done]
            st["t2lim"][da] = rule.margin * np.maximum(st["t2lim"][da], st["cmax_t2"][da])
            qlim = st["qlim"][da]
            st["qlim"][da] = np.where(np.isfinite(qlim),
                                      rule.margin * np.maximum(qlim, st["cmax_q"][da]), qlim)
            st["trained"][da] = True


def fit(rule: MultivariateRule, st: Mapping[str, Arr], a: I64) -> None:
    """The model of devices ``a`` from their training sums (then frozen)."""
    m = len(rule.metrics)
    n = st["count"][a].astype(np.float64)
    s1, s2 = st["s1"][a], st["s2"][a]
    mean_y = s1 / n[:, None]
    cov = (s2 - s1[:, :, None] * mean_y[:, None, :]) / (n - 1.0)[:, None, None]
    mu = st["shift"][a] + mean_y
    var = np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0)
    floor = np.maximum(rule.min_std, 1e-9 * np.maximum(1.0, np.abs(mu)))
    sd = np.maximum(np.sqrt(var), floor)
    corr = cov / (sd[:, :, None] * sd[:, None, :])
    corr = 0.5 * (corr + np.swapaxes(corr, 1, 2))
    lam, vec = np.linalg.eigh(corr)
    lam, vec = lam[:, ::-1], vec[:, :, ::-1]  # largest first
    lam = np.maximum(lam, 1e-9)
    # shrinking toward the identity keeps the eigenvectors and lifts each eigenvalue:
    # it steadies T² (weights 1/λ); SPE's limit uses the eigenvalues as measured
    held = (1.0 - rule.shrinkage) * lam + rule.shrinkage
    if rule.components is not None:
        k = np.full(a.shape[0], min(rule.components, m), dtype=np.int64)
    else:
        share = np.cumsum(lam, axis=1) / colsum(lam)[:, None]
        k = np.minimum((share < AUTO_VARIANCE).sum(axis=1) + 1, m - 1)
    kept = np.arange(m)[None, :] < k[:, None]
    kf = k.astype(np.float64)
    dfd = np.maximum(n - kf, 1.0)
    from scipy import stats  # noqa: PLC0415 - 2 s of imports: only when a model is trained

    t2lim = kf * (n * n - 1.0) / (n * dfd) * stats.f.ppf(rule.quantile, kf, dfd)
    resid = np.where(kept, 0.0, lam)
    th1, th2 = colsum(resid), colsum(resid * resid)
    ok = th1 > 0
    g = np.where(ok, th2 / np.where(ok, th1, 1.0), 1.0)
    h = np.where(ok, th1 * th1 / np.where(ok, th2, 1.0), 1.0)
    qlim = np.where(ok, g * stats.chi2.ppf(rule.quantile, h), np.inf)
    st["mu"][a], st["sd"][a], st["vec"][a] = mu, sd, vec
    st["w"][a] = np.where(kept, 1.0 / held, 0.0)
    st["res"][a] = np.where(kept, 0.0, 1.0)
    st["t2lim"][a], st["qlim"][a] = t2lim, qlim
    st["fitted"][a] = True


def project(st: Mapping[str, Arr], a: I64, x: F64) -> tuple[F64, F64]:
    """(standardised deviations, principal-component scores) of observations ``x``."""
    d = (x - st["mu"][a]) / st["sd"][a]
    vec = st["vec"][a]
    t = d[:, 0, None] * vec[:, 0, :]
    for j in range(1, d.shape[1]):
        t = t + d[:, j, None] * vec[:, j, :]
    return d, t


def score(st: Mapping[str, Arr], a: I64, x: F64) -> tuple[F64, F64, F64]:
    """(score, T², SPE) of observations ``x`` of trained devices ``a``; the score is
    ``max(T²/limit, SPE/limit)`` (an alarm from 1)."""
    _, t = project(st, a, x)
    t2 = colsum(t * t * st["w"][a])
    spe = colsum(t * t * st["res"][a])
    s = np.maximum(t2 / st["t2lim"][a], spe / st["qlim"][a])
    return s, t2, spe


def explain(rule: MultivariateRule, st: Mapping[str, Arr], a: I64, x: F64) -> list[str]:
    """Each observation's alarming statistic and its top contributing metrics.

    T²: contribution of metric j is ``d_j · (V W Vᵀ d)_j`` (they sum to T²); SPE: the
    squared residual of metric j (they sum to SPE). Shares are of the positive part.
    """
    if not a.shape[0]:
        return []
    d, t = project(st, a, x)
    vec, w, res = st["vec"][a], st["w"][a], st["res"][a]
    t2 = colsum(t * t * w)
    spe = colsum(t * t * res)
    r2, rq = t2 / st["t2lim"][a], spe / st["qlim"][a]
    back_t2 = np.einsum("nji,ni->nj", vec, t * w)
    fitted = np.einsum("nji,ni->nj", vec, t * (1.0 - res))
    c_t2 = d * back_t2
    c_q = (d - fitted) ** 2
    out = []
    for i in range(a.shape[0]):
        use_t2 = bool(r2[i] >= rq[i])
        c = np.maximum(c_t2[i] if use_t2 else c_q[i], 0.0)
        total = float(c.sum()) or 1.0
        top = np.argsort(-c, kind="stable")[:TOP]
        names = ", ".join(f"{rule.metrics[j]} {100.0 * c[j] / total:.0f}%" for j in top.tolist())
        out.append(f"T2 {t2[i]:.4g}/{st['t2lim'][a[i]]:.4g} SPE {spe[i]:.4g}/"
                   f"{st['qlim'][a[i]]:.4g} ({'T2' if use_t2 else 'SPE'}): {names}")
    return out


# ---------------------------------------------------------------- numpy kernel


def _anchors(rule: MultivariateRule, env: Env, series: I64) -> tuple[I64, Arr]:
    """Anchor series of each row (-1: the device has no series of the first metric yet)
    and the per-anchor series of every metric (-1: none), looked up once and kept in
    ``env.params``."""
    anc_all, sids = env.params["anchor"], env.params["sids"]
    anc = anc_all[series]
    missing = anc < 0
    table = env.table
    if missing.any():
        for sid in np.unique(series[missing]).tolist():
            found = table.lookup(table.devices[sid].id, rule.metrics[0])
            if found is not None and found < anc_all.shape[0]:
                anc_all[sid] = found
        anc = anc_all[series]
    heads = np.unique(anc[anc >= 0])
    if heads.shape[0]:
        incomplete = heads[(sids[heads] < 0).any(axis=1)]
        for head in incomplete.tolist():
            dev_id = table.devices[head].id
            for j, metric in enumerate(rule.metrics):
                if sids[head, j] < 0:
                    found = table.lookup(dev_id, metric)
                    if found is not None and found < sids.shape[0]:
                        sids[head, j] = found
    return anc, sids


def mv_kernel(rule: MultivariateRule, env: Env, series: I64, ts: I64, value: F64
              ) -> Transitions:
    """Regroup rows by device, close observations, train or score them, then latch."""
    st = env.state.arrays
    anc, sids = _anchors(rule, env, series)
    cur_t, cur_v = st["cur_t"], st["cur_v"]
    grouped = np.flatnonzero(anc >= 0)
    obs: tuple[I64, I64, F64] | None = None
    if grouped.shape[0]:
        obs = _observations(rule, env, series, ts, value, anc, sids, grouped)
    seg = Segments.of(series)  # each series keeps its latest reading
    cur_t[series[seg.end_idx]] = ts[seg.end_idx]
    cur_v[series[seg.end_idx]] = value[seg.end_idx]
    if obs is None or not obs[0].shape[0]:
        return empty_transitions()
    oa, ot, x = obs
    return _judge(rule, env, oa, ot, x)


def _observations(rule: MultivariateRule, env: Env, series: I64, ts: I64, value: F64,
                  anc: I64, sids: Arr, grouped: I64) -> tuple[I64, I64, F64]:
    """The complete observations closed in this batch: (anchor, time, values), sorted
    by anchor and time; each device's pending time moves on."""
    st = env.state.arrays
    m = len(rule.metrics)
    mi = env.params["mi"]
    o = grouped[np.lexsort((ts[grouped], anc[grouped]))]
    a, t, j, v = anc[o], ts[o], mi[series[o]], value[o]
    dseg = Segments.of(a)
    n = a.shape[0]
    pend0 = st["pend_t"][a]
    anchored0 = st["cur_t"][a] != NEVER  # the first metric was seen before this batch
    _, ok0 = ffill_index(j == 0, dseg)
    part = anchored0 | ok0
    # latest participating time before each row (or the pending time of the state)
    ip, okp = ffill_index(part, dseg)
    prev_ip = np.zeros(n, dtype=np.int64)
    prev_ok = np.zeros(n, dtype=np.bool_)
    prev_ip[1:], prev_ok[1:] = ip[:-1], okp[:-1]
    prev_ok &= ~dseg.starts
    before = np.where(prev_ok, np.maximum(t[np.maximum(prev_ip, 0)], pend0), pend0)
    close = part & (before != NEVER) & (t > before)
    last = dseg.end_idx
    ip_last = ip[last]
    st["pend_t"][a[last]] = np.where(okp[last], np.maximum(t[np.maximum(ip_last, 0)],
                                                           pend0[last]), pend0[last])
    rows = np.flatnonzero(close)
    if not rows.shape[0]:
        return rows, rows, np.empty((0, m))
    oa, ot = a[rows], before[rows]
    has_prev = ~dseg.starts[rows]
    x = np.empty((rows.shape[0], m))
    xt = np.empty((rows.shape[0], m), dtype=np.int64)
    r1 = np.maximum(rows - 1, 0)
    for k in range(m):
        ik, okk = ffill_index(j == k, dseg)
        in_batch = has_prev & okk[r1]
        sid = sids[oa, k]
        known = sid >= 0
        ss = np.where(known, sid, 0)
        x[:, k] = np.where(in_batch, v[ik[r1]], st["cur_v"][ss])
        xt[:, k] = np.where(in_batch, t[ik[r1]], np.where(known, st["cur_t"][ss], NEVER))
    complete = ((xt != NEVER) & (ot[:, None] - xt <= rule.max_gap_ns)).all(axis=1)
    return oa[complete], ot[complete], x[complete]


def _judge(rule: MultivariateRule, env: Env, oa: I64, ot: I64, x: F64) -> Transitions:
    """Train on the observations of devices in training (one step per rank), score the
    others, latch the scores."""
    st = env.state.arrays
    trained = st["trained"]
    scored = np.ones(oa.shape[0], dtype=np.bool_)
    if not trained[oa].all():
        oseg = Segments.of(oa)
        rank = oseg.rows - oseg.first
        order = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[order], np.arange(int(rank.max()) + 2))
        for k in range(bounds.shape[0] - 1):
            at = order[bounds[k]:bounds[k + 1]]
            sel = at[~trained[oa[at]]]
            if not sel.shape[0]:
                break
            train_step(rule, st, oa[sel], ot[sel], x[sel])
            scored[sel] = False
    idx = np.flatnonzero(scored)
    if not idx.shape[0]:
        return empty_transitions()
    sa, stt, sx = oa[idx], ot[idx], x[idx]
    s, _, _ = score(st, sa, sx)
    seg = Segments.of(sa)
    if rule.likelihood is not None:
        groups = Groups.of(seg.start_idx, sa.shape[0])
        x = likelihood_kernel(env.state, s, groups, sa[seg.start_idx])
        set_ev, reset_ev = likelihood_events(x, rule.likelihood)
    else:
        known = ~np.isnan(s)
        set_ev, reset_ev = known & (s >= 1.0), known & (s < rule.clear)
    rows, fire = latch(env.state, sa, stt, set_ev, reset_ev, seg, rule.for_ns,
                       rule.keep_firing_for_ns)
    detail = [""] * rows.shape[0]
    on = np.flatnonzero(fire)
    if on.shape[0]:
        texts = explain(rule, st, sa[rows[on]], sx[rows[on]])
        devices = env.table.devices
        for i, text in zip(on.tolist(), texts, strict=True):
            detail[i] = text
            log.info("multivariate %s firing device=%s: %s", rule.id,
                     devices[int(sa[rows[i]])].id, text)
    return Transitions(rows, fire, stt[rows], s[rows], series=sa[rows], detail=detail)


# ---------------------------------------------------------------- reference


@dataclass
class MvDevice:
    """Reference state of one device: latest readings, pending time, model, latch."""

    cur: dict[int, tuple[int, float]] = field(default_factory=dict)
    anchored: bool = False
    pend: int = NEVER
    model: dict[str, Arr] = field(default_factory=dict)
    latch: Latch = field(default_factory=Latch)
    lk: LikelihoodRef = field(default_factory=LikelihoodRef)


def new_device(rule: MultivariateRule) -> MvDevice:
    """A fresh device: its model arrays are one-row versions of the kernel's state."""
    dev = MvDevice()
    for name, (dtype, fill, width) in mv_fields(rule).items():
        shape = (1, *width) if isinstance(width, tuple) else (1, width) if width else (1,)
        dev.model[name] = np.full(shape, fill, dtype=dtype)
    return dev


def mv_step(rule: MultivariateRule, dev: MvDevice, metric: str, t: int, v: float
            ) -> list[Out]:
    """One in-order reading of one of the device's metrics."""
    j = rule.metrics.index(metric)
    out: list[Out] = []
    if j == 0:
        dev.anchored = True
    if dev.anchored:
        if dev.pend != NEVER and t > dev.pend:
            out = _ref_observe(rule, dev, dev.pend)
        dev.pend = max(dev.pend, t)
    dev.cur[j] = (t, v)
    return out


def _ref_observe(rule: MultivariateRule, dev: MvDevice, when: int) -> list[Out]:
    m = len(rule.metrics)
    vals: list[float] = []
    for j in range(m):
        got = dev.cur.get(j)
        if got is None or when - got[0] > rule.max_gap_ns:
            return []
        vals.append(got[1])
    a = np.zeros(1, dtype=np.int64)
    x = np.array([vals], dtype=np.float64)
    if not dev.model["trained"][0]:
        train_step(rule, dev.model, a, np.array([when], dtype=np.int64), x)
        return []
    s = float(score(dev.model, a, x)[0][0])
    if rule.likelihood is not None:
        set_, reset = likelihood_step(dev.lk, None if np.isnan(s) else s, rule.likelihood)
        return dev.latch.step(rule, when, set_, reset, s)
    known = not np.isnan(s)  # NaN: no information, neither sets nor resets
    return dev.latch.step(rule, when, known and s >= 1.0, known and s < rule.clear, s)


class MultivariateKind(RuleKind[MultivariateRule]):
    """``multivariate``: NaN readings are dropped; late readings are ignored."""

    name = "multivariate"
    model = MultivariateRule

    def applies(self, rule: MultivariateRule, device_type: str, metric: str) -> bool:
        """Every listed metric of the rule's device types."""
        return ((not rule.device_types or device_type in rule.device_types)
                and metric in rule.metrics)

    def state_fields(self, rule: MultivariateRule) -> dict[str, FieldSpec]:
        """See :func:`mv_fields`."""
        return mv_fields(rule)

    def series_params(self, rule: MultivariateRule, devices: Sequence[Device],
                      metrics: Sequence[str], start: int, stop: int) -> dict[str, Arr]:
        """Metric index of each series; anchor and metric series, looked up lazily."""
        index = {name: i for i, name in enumerate(rule.metrics)}
        mi = np.array([index.get(metrics[s], -1) for s in range(start, stop)],
                      dtype=np.int64)
        return {"mi": mi, "anchor": np.full(stop - start, -1, dtype=np.int64),
                "sids": np.full((stop - start, len(rule.metrics)), -1, dtype=np.int64)}

    def kernel(self, rule: MultivariateRule, env: Env, series: I64, ts: I64, value: F64
               ) -> Transitions:
        """See :func:`mv_kernel`."""
        return mv_kernel(rule, env, series, ts, value)

    def report_series(self, rule: MultivariateRule, env: RefEnv, sid: int) -> int:
        """Findings are reported on the device's series of the first metric."""
        assert env.device is not None and env.table is not None
        found = env.table.lookup(env.device.id, rule.metrics[0])
        return sid if found is None else found

    def ref_state(self, rule: MultivariateRule) -> Any:
        """Per-series state is none: the device's lives in ``env.shared``."""
        return None

    def ref_step(self, rule: MultivariateRule, st: Any, t: int, v: float, env: RefEnv
                 ) -> list[Out]:
        """See :func:`mv_step`."""
        assert env.device is not None
        dev = env.shared.get((rule.id, env.device.id))
        if dev is None:
            dev = env.shared[(rule.id, env.device.id)] = new_device(rule)
        return mv_step(rule, dev, env.metric, t, v)


KIND = MultivariateKind()
