"""What the service writes to InfluxDB for the dashboards: device info and service counters.

See :mod:`dashboards.lines` for the two measurements (``lifeline_device_info``,
``lifeline_service``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from alerts.delivery.outbox import OutboxWorker
from dashboards.lines import device_info_lines, service_line
from devices.model import Device

log = logging.getLogger(__name__)

REWRITE_EVERY_S = 600.0  # device info is rewritten this often (and when the registry changes)


class _Counts(Protocol):
    decoded_values: int
    findings: int


class DeviceInfoFeed:
    """Writes ``lifeline_device_info`` at start-up, when the registry changes, and every
    ``REWRITE_EVERY_S`` (so a dashboard's last() finds every device)."""

    def __init__(self, devices: Callable[[], Iterable[Device]],
                 submit: Callable[[list[str]], None], every_s: float = REWRITE_EVERY_S) -> None:
        self._devices = devices
        self._submit = submit
        self._every_s = every_s
        self._last = -float("inf")
        self._signature: int | None = None

    def maybe_write(self, now: float | None = None) -> int:
        """Write the lines when due or changed; returns the number written."""
        now = time.monotonic() if now is None else now
        devices = list(self._devices())
        signature = hash(tuple((d.id, d.type, d.grid, d.district, d.unit, d.dma, d.lat, d.lon,
                                d.name, d.enabled) for d in devices))
        if signature == self._signature and now - self._last < self._every_s:
            return 0
        self._signature, self._last = signature, now
        lines = device_info_lines(devices, time.time_ns())
        if lines:
            self._submit(lines)
            log.info("device info written for %d devices", len(lines))
        return len(lines)


def service_metrics_line(counts: _Counts, rules: int, worker: OutboxWorker | None, host: str,
                         ts_ns: int) -> str:
    """The ``lifeline_service`` point: rule engine and webhook counters."""
    counters = {"evaluated_values": counts.decoded_values, "findings": counts.findings,
                "rules": rules}
    if worker is not None:
        st = worker.stats
        counters.update(webhook_delivered=st.delivered,
                        webhook_failed_attempts=st.failed_attempts, webhook_dead=st.dead,
                        webhook_via_fallback=st.via_fallback)
        try:
            counters["webhook_pending"] = worker.pending_due()
        except Exception as exc:  # the outbox database is away: counters still go out
            log.warning("cannot count pending webhooks: %s", exc)
    return service_line(host, counters, ts_ns)
