"""Measurements written for the dashboards that no other part writes (declared in
:mod:`tsdb.schema`: ``DEVICE_INFO``, ``SERVICE``).

- ``lifeline_device_info`` — one point per registered device (tags ``device``, ``type``,
  ``grid``, ``district``, ``unit``, ``dma``; fields ``lat``, ``lon``, ``name``,
  ``enabled``): the geomap's coordinates and the district → DMA → grid → device
  variables. Written by the service at start-up and whenever the registry changes.
- ``lifeline_service`` — the service's rule-engine and webhook counters (tag ``host``;
  fields ``evaluated_values``, ``findings``, ``rules``, ``webhook_delivered``,
  ``webhook_failed_attempts``, ``webhook_dead``, ``webhook_via_fallback``,
  ``webhook_pending``), written with ``lifeline_ingest`` every metrics interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from devices.model import Device
from tsdb.lineproto import FieldValue
from tsdb.schema import DEVICE_INFO, SERVICE


def device_info_line(device: Device, ts_ns: int) -> str | None:
    """The ``lifeline_device_info`` line of one device (None: nothing to write)."""
    tags = {"device": device.id, "type": device.type, "grid": device.grid,
            "district": device.district, "unit": device.unit, "dma": device.dma}
    fields: dict[str, FieldValue] = {"enabled": 1 if device.enabled else 0,
                                     "name": device.name or device.id}
    if device.lat is not None and device.lon is not None and math.isfinite(device.lat) \
            and math.isfinite(device.lon):
        fields.update(lat=float(device.lat), lon=float(device.lon))
    return DEVICE_INFO.line(tags, fields, ts_ns)


def device_info_lines(devices: Iterable[Device], ts_ns: int) -> list[str]:
    """``lifeline_device_info`` lines of every device."""
    return [line for d in devices if (line := device_info_line(d, ts_ns)) is not None]


def service_line(host: str, counters: Mapping[str, int], ts_ns: int) -> str:
    """One ``lifeline_service`` point (integer counters)."""
    if not counters:
        raise ValueError("service_line: no counters")
    fields: dict[str, FieldValue] = {k: int(v) for k, v in sorted(counters.items())}
    return SERVICE.line({"host": host}, fields, ts_ns)
