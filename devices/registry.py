"""Device registry: the devices the service accepts readings from."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from devices.catalogue import Catalogue
from devices.errors import InventoryError
from devices.inventory import COLUMNS, read_file, write_csv
from devices.model import Device

log = logging.getLogger(__name__)

INVENTORY_COLUMNS = COLUMNS


class DeviceLookup(Protocol):
    """What ingest needs from a registry: find a device by id."""

    def get(self, device_id: str) -> Device | None:
        """The device with ``device_id``, or None when unknown."""
        ...


class MemoryRegistry:
    """A thread-safe in-memory registry, loaded from an inventory file."""

    def __init__(self, devices: Iterable[Device] = ()) -> None:
        self._lock = threading.Lock()
        self._devices: dict[str, Device] = {d.id: d for d in devices}

    def get(self, device_id: str) -> Device | None:
        """The device with ``device_id``, or None."""
        return self._devices.get(device_id)

    def add(self, device: Device) -> None:
        """Add or replace a device."""
        with self._lock:
            self._devices[device.id] = device

    def __len__(self) -> int:
        return len(self._devices)

    def __iter__(self) -> Iterator[Device]:
        return iter(list(self._devices.values()))


def read_inventory(path: Path, catalogue: Catalogue, *,
                   encoding: str = "utf-8-sig") -> list[Device]:
    """Read an inventory file (CSV with a header, or ``.json``; see :mod:`devices.inventory`).

    Every bad row is reported (with its line number) in one error.
    """
    parsed = read_file(path, catalogue, encoding=encoding)
    if parsed.problems:
        shown = "; ".join(str(p) for p in parsed.problems[:20])
        more = len(parsed.problems) - 20
        raise InventoryError(f"{path}: {len(parsed.problems)} bad rows: {shown}"
                             + (f"; ... and {more} more" if more > 0 else ""))
    return parsed.devices


def write_inventory(path: Path, devices: Iterable[Device]) -> None:
    """Write devices as an inventory CSV that :func:`read_inventory` reads back."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        write_csv(handle, devices)
