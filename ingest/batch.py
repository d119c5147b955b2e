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
    """Readings as parallel numpy arrays; row i is one value of one series."""

    series: npt.NDArray[np.int64]
    ts_ns: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    flags: npt.NDArray[np.uint16]

    def __len__(self) -> int:
        return int(self.series.shape[0])

    @classmethod
    def empty(cls) -> Batch:
        """A batch with no rows."""
        return cls.from_lists([], [], [], [])

    @classmethod
    def from_lists(
        cls, series: list[int], ts_ns: list[int], value: list[float], flags: list[int]
    ) -> Batch:
        """Build a batch from equally long Python lists."""
        return cls(
            series=np.asarray(series, dtype=np.int64),
            ts_ns=np.asarray(ts_ns, dtype=np.int64),
            value=np.asarray(value, dtype=np.float64),
            flags=np.asarray(flags, dtype=np.uint16),
        )
