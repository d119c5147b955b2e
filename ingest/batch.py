"""Columnar batches of readings and the raw messages they come from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

import numpy as np
import numpy.typing as npt

from ingest.raw import RawBuffer, RawMessage

__all__ = ["Batch", "RawBuffer", "RawMessage", "ReadingFlag"]


class ReadingFlag(IntFlag):
    """Why a stored reading deserves a second look (stored in the ``flags`` field)."""

    NONE = 0
    TS_MISSING = 1  # no timestamp in the payload: receive time used
    OUT_OF_RANGE = 2  # outside the metric's physical range
    CONVERTED = 4  # converted from a device unit


@dataclass(frozen=True, slots=True)
class Batch:
    """Readings as parallel numpy arrays; row i is one value of one series.

    ``ts_ns`` is the reading's time (as sent, or the receive time when it sent none):
    the rule engine judges it. ``point_ns`` is the time of the reading's InfluxDB
    point: ``ts_ns`` plus the reading's tie-break (see :mod:`ingest.decode`), so
    distinct readings of one device never share a point. ``None``: same as ``ts_ns``.
    """

    series: npt.NDArray[np.int64]
    ts_ns: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    flags: npt.NDArray[np.uint16]
    point_ns: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return int(self.series.shape[0])

    @property
    def stored_ns(self) -> npt.NDArray[np.int64]:
        """The InfluxDB point time of each row."""
        return self.ts_ns if self.point_ns is None else self.point_ns

    @classmethod
    def empty(cls) -> Batch:
        """A batch with no rows."""
        return cls.from_lists([], [], [], [])

    @classmethod
    def from_lists(
        cls, series: list[int], ts_ns: list[int], value: list[float], flags: list[int],
        point_ns: list[int] | None = None,
    ) -> Batch:
        """Build a batch from equally long Python lists."""
        return cls(
            series=np.asarray(series, dtype=np.int64),
            ts_ns=np.asarray(ts_ns, dtype=np.int64),
            value=np.asarray(value, dtype=np.float64),
            flags=np.asarray(flags, dtype=np.uint16),
            point_ns=None if point_ns is None else np.asarray(point_ns, dtype=np.int64),
        )
