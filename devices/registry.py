"""Device registry: the devices the service accepts readings from."""

from __future__ import annotations

import csv
import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from devices.catalogue import Catalogue
from devices.errors import InventoryError
from devices.model import Device, valid_device_id

log = logging.getLogger(__name__)

INVENTORY_COLUMNS = ("id", "type", "grid", "district", "unit", "name")


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


def read_inventory(path: Path, catalogue: Catalogue) -> list[Device]:
    """Read an inventory CSV (columns: id,type,grid,district,unit,name).

    Every bad row is reported (with its line number) in one error.
    """
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read inventory: {exc}") from exc
    devices: list[Device] = []
    problems: list[str] = []
    with handle:
        reader = csv.DictReader(handle)
        missing = {"id", "type"} - set(reader.fieldnames or ())
        if missing:
            raise InventoryError(f"{path}: missing columns: {', '.join(sorted(missing))}")
        for row in reader:
            line = reader.line_num
            device_id = (row.get("id") or "").strip()
            type_name = (row.get("type") or "").strip()
            if not valid_device_id(device_id):
                problems.append(f"line {line}: invalid device id {device_id!r}")
                continue
            if type_name not in catalogue:
                problems.append(f"line {line}: unknown device type {type_name!r}")
                continue
            devices.append(
                Device(
                    id=device_id,
                    type=type_name,
                    grid=(row.get("grid") or "").strip(),
                    district=(row.get("district") or "").strip(),
                    unit=(row.get("unit") or "").strip(),
                    name=(row.get("name") or "").strip(),
                )
            )
    if problems:
        raise InventoryError(f"{path}: {len(problems)} bad rows: " + "; ".join(problems[:20]))
    return devices


def write_inventory(path: Path, devices: Iterable[Device]) -> None:
    """Write devices as an inventory CSV that :func:`read_inventory` reads back."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(INVENTORY_COLUMNS)
        for d in devices:
            writer.writerow([d.id, d.type, d.grid, d.district, d.unit, d.name])
