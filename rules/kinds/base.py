"""What a rule kind is: the protocol the engine and the reference call.

A kind is one module in :mod:`rules.kinds` with its rule model (a pydantic
:class:`~rules.model.RuleBase` subclass), its numpy kernel over whole batches, its
per-series state fields, its late-reading handling and its one-reading-at-a-time
reference step, plus a :class:`RuleKind` instance registered in
:data:`rules.kinds.KINDS`. Shared machinery stays shared: the anti-flap latch and
late-onset hysteresis (numpy: :mod:`rules.kernels`; plain Python: :class:`Latch`,
:func:`late_onset` here), durations (:mod:`rules.model`), the series table.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from devices.model import Device
from rules.model import Finding, RuleBase

if TYPE_CHECKING:
    from devices.series import SeriesTable
    from rules.kernels import FieldSpec, SeriesState, Transitions

R = TypeVar("R", bound=RuleBase)
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
Arr = npt.NDArray[Any]
Out = tuple[int, bool, float]
"""A reference transition: (ts, firing, value)."""
NEVER = -(2**63)


@dataclass(frozen=True, slots=True)
class Env:
    """What a kernel reads besides its rows (one per loaded rule, made by the engine).

    ``state``: the rule's per-series arrays (:meth:`RuleKind.state_fields`), updated in
    place. ``params``: the per-series parameter arrays of :meth:`RuleKind.series_params`
    (device overrides applied). ``timezone``: the engine's local time zone. ``table``:
    the series table (device and metric of every series id).
    """

    state: SeriesState
    params: Mapping[str, Arr]
    timezone: str
    table: SeriesTable


@dataclass(frozen=True, slots=True)
class RefEnv:
    """What a reference step reads besides its reading: the series' device and metric
    and the time zone."""

    device: Device | None
    metric: str
    timezone: str
    table: SeriesTable | None = None
    """The reference's series table (kinds that report on another series look it up)."""
    shared: dict[Any, Any] = field(default_factory=dict)
    """State the reference keeps per rule across series (``multivariate``: per device)."""


class FindingTracker(Protocol):
    """Per-rule state of a kind that combines other rules' findings (``composite``)."""

    def feed(self, f: Finding, device: Device) -> Finding | None:
        """Take one finding of another rule; returns this rule's transition, if any."""
        ...

    def dump(self) -> dict[str, Any]:
        """JSON-able state (saved with the engine's state)."""
        ...

    def load(self, data: dict[str, Any]) -> None:
        """Restore what :meth:`dump` wrote."""
        ...

    def firing_count(self) -> int:
        """How many scopes are firing."""
        ...


class RuleKind(Generic[R]):
    """One kind of rule: everything the engine and the reference need to know about it.

    Subclass it in ``rules/kinds/<kind>.py``, set :attr:`name` and :attr:`model`, and
    override what the kind does; the defaults describe a kind with no state, no
    per-series parameters, no late-reading findings and no time-driven evaluation.
    """

    name: ClassVar[str]
    """The ``kind`` value in rule files."""
    model: type[R]
    """The rule's pydantic model (its validation is the TOML parsing)."""
    reads_nan: ClassVar[bool] = False
    """NaN readings reach the kernel/reference step (else they are dropped first)."""
    ticks: ClassVar[bool] = False
    """The kind is evaluated by time too (:meth:`tick`, :meth:`ref_tick`)."""
    health: ClassVar[bool] = False
    """Findings are about the sensor's health, not the process it measures."""

    # ------------------------------------------------------------ model

    def parse(self, entry: Mapping[str, Any]) -> R:
        """Validate one ``[[rule]]`` table (raises pydantic's ``ValidationError``)."""
        return self.model.model_validate(entry)

    def references(self, rule: R) -> tuple[str, tuple[str, ...]]:
        """(field, rule ids) of the other rules this rule combines; none by default."""
        return "", ()

    def applies(self, rule: R, device_type: str, metric: str) -> bool:
        """Whether ``rule`` reads the series of ``metric`` on devices of ``device_type``.

        Worked out once per (device type, metric) and kept per series; a kind with
        several input metrics matches each of them.
        """
        return ((not rule.device_types or device_type in rule.device_types)
                and fnmatch.fnmatchcase(metric, rule.metric))

    # ------------------------------------------------------------ state

    def state_fields(self, rule: R) -> dict[str, FieldSpec]:
        """Per-series state arrays: name → (dtype, initial value, width or shape).

        They are grown as series appear, saved and restored by series key, and a
        ``firing`` (and ``raw_on``) field is what ``sync_firing``/``describe`` read.
        """
        return {}

    def series_params(self, rule: R, devices: Sequence[Device], metrics: Sequence[str],
                      start: int, stop: int) -> dict[str, Arr]:
        """Per-series parameters of series ``start`` .. ``stop - 1`` (e.g. a device's own
        limits); recomputed when the registry replaces a device. None by default."""
        return {}

    def restored(self, rule: R, state: SeriesState, series: I64, now_ns: int) -> None:
        """Adjust restored state of ``series`` at a service start at ``now_ns``."""

    # ------------------------------------------------------------ numpy kernel

    def kernel(self, rule: R, env: Env, series: I64, ts: I64, value: F64) -> Transitions:
        """Evaluate rows sorted by (series, time), each newer than its series' state.

        Must equal feeding the rows one at a time through :meth:`ref_step`.
        """
        raise NotImplementedError(f"kind {self.name!r} has no reading kernel")

    def judges_late(self, rule: R) -> bool:
        """Late readings (older than the series' last one) go to :meth:`late`."""
        return False

    def late(self, rule: R, env: Env, series: I64, ts: I64, value: F64) -> Transitions:
        """Late findings of late rows (sorted by series and time); state is only read
        (besides the late hysteresis of :func:`rules.kernels.late_onsets`)."""
        raise NotImplementedError(f"kind {self.name!r} does not judge late readings")

    def tick(self, rule: R, env: Env, applies: B, now_ns: int) -> Transitions:
        """Time-driven transitions at ``now_ns`` (``rows`` are series ids)."""
        raise NotImplementedError(f"kind {self.name!r} is not evaluated by time")

    def tracker(self, rule: R) -> FindingTracker | None:
        """A kind that combines findings instead of reading series returns its state."""
        return None

    # ------------------------------------------------------------ reference

    def report_series(self, rule: R, env: RefEnv, sid: int) -> int:
        """The series a reference transition of a reading of series ``sid`` is reported
        on (the kernel's ``Transitions.series``); the reading's own by default."""
        return sid

    def ref_state(self, rule: R) -> Any:
        """A fresh reference state of one series."""
        return None

    def ref_step(self, rule: R, st: Any, t: int, v: float, env: RefEnv) -> list[Out]:
        """One in-order reading of one series, in plain Python."""
        raise NotImplementedError(f"kind {self.name!r} has no reference step")

    def ref_late(self, rule: R, st: Any, t: int, v: float, env: RefEnv) -> list[Out]:
        """One late reading (only called where :meth:`judges_late`)."""
        return []

    def ref_tick(self, rule: R, st: Any, now_ns: int) -> list[Out]:
        """Time-driven evaluation of one series (only called where :attr:`ticks`)."""
        return []


# ---------------------------------------------------------------- reference helpers


@dataclass
class Latch:
    """Hysteresis + ``for`` + ``keep_firing_for`` of one series (plain Python)."""

    raw: bool = False
    on_since: int = 0
    off_since: int = 0
    firing: bool = False
    last_change: int = NEVER

    def step(self, rule: RuleBase, t: int, set_: bool, reset: bool, value: float
             ) -> list[Out]:
        """Feed one reading's events; returns the transition, if any."""
        raw = True if set_ else False if reset else self.raw
        if raw and not self.raw:
            self.on_since = t
        if not raw and self.raw:
            self.off_since = t
        self.raw = raw
        if raw:
            fire = self.firing or t - self.on_since >= rule.for_ns
        else:
            fire = self.firing and t - self.off_since < rule.keep_firing_for_ns
        changed = fire != self.firing
        self.firing = fire
        if changed:
            self.last_change = t
        return [(t, fire, value)] if changed else []


@dataclass
class LateJudged:
    """Reference state of a latched kind that judges late readings."""

    latch: Latch = field(default_factory=Latch)
    late_on: bool = False
    late_t: int = NEVER


def late_onset(st: LateJudged, t: int, v: float,
               events: Callable[[], tuple[bool, bool]]) -> list[Out]:
    """A late reading: never changes the rule's state. While the series is not firing
    and the reading is after its last transition and after the late readings judged
    before, its ``events()`` go through the late hysteresis (reset by a later live
    transition); turning it on is a late firing."""
    lt = st.latch
    if lt.firing or t <= max(lt.last_change, st.late_t):
        return []
    on = st.late_on and st.late_t > lt.last_change
    set_, reset = events()
    now = True if set_ else False if reset else on
    st.late_on, st.late_t = now, t
    return [(t, True, v)] if now and not on else []


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    v = sorted(values)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2.0
