"""Series table: a dense integer id for each (device, metric) pair.

Batches and rule state are numpy arrays indexed by these ids.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import numpy.typing as npt

from devices.model import Device
from tsdb.lineproto import Measurement
from tsdb.schema import READING


class SeriesTable:
    """Assigns stable series ids and remembers what each id stands for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, str], int] = {}
        self.devices: list[Device] = []
        self.metrics: list[str] = []
        self.line_prefixes: list[str] = []

    def __len__(self) -> int:
        return len(self.metrics)

    def id_for(self, device: Device, metric: str) -> int:
        """The series id of ``(device, metric)``, created on first use."""
        key = (device.id, metric)
        sid = self._ids.get(key)
        if sid is not None and self.devices[sid] is device:
            return sid
        with self._lock:
            sid = self._ids.get(key)
            if sid is None:
                sid = len(self.metrics)
                self._ids[key] = sid
                self.devices.append(device)
                self.metrics.append(metric)
                self.line_prefixes.append(_line_prefix(device, metric))
            elif self.devices[sid] is not device:
                # The registry replaced the device (new grid, unit, ...): refresh tags.
                self.devices[sid] = device
                self.line_prefixes[sid] = _line_prefix(device, metric)
            return sid

    def lookup(self, device_id: str, metric: str) -> int | None:
        """The series id of ``(device_id, metric)`` if it exists."""
        return self._ids.get((device_id, metric))

    def types_array(self) -> npt.NDArray[np.object_]:
        """Device type of every series, as an object array."""
        return np.array([d.type for d in self.devices], dtype=object)


def _line_prefix(device: Device, metric: str) -> str:
    """``measurement,tags field=`` of the InfluxDB line for this series."""
    tags = {"device": device.id, "grid": device.grid, "district": device.district,
            "unit": device.unit}
    return _reading(device.type).prefix(tags, metric)


@functools.lru_cache(maxsize=1024)
def _reading(device_type: str) -> Measurement:
    """The device-type measurement of the schema's reading family (any metric)."""
    return READING.named(device_type)
