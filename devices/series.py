"""Series table: a dense integer id for each (device, metric) pair.

Batches and rule state are numpy arrays indexed by these ids.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from devices.model import Device


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


def escape_tag(value: str) -> str:
    """Escape a measurement, tag key or tag value for InfluxDB line protocol."""
    return value.replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def escape_string_field(value: str) -> str:
    """Quote a string field value for InfluxDB line protocol."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _line_prefix(device: Device, metric: str) -> str:
    """``measurement,tags field=`` of the InfluxDB line for this series."""
    tags = [f"device={escape_tag(device.id)}"]
    for key in ("grid", "district", "unit"):
        value = getattr(device, key)
        if value:
            tags.append(f"{key}={escape_tag(value)}")
    measurement = escape_tag(device.type)
    return f"{measurement},{','.join(tags)} {escape_tag(metric)}="
