"""Findings become alerts: one per fingerprint (device + rule), firing or resolved."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from alerts.webhook import WebhookEvent
from devices.registry import DeviceLookup
from devices.series import escape_string_field, escape_tag
from rules.model import Finding, FindingState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """An alert changed state."""

    fingerprint: str
    finding: Finding


class AlertStage:
    """De-duplicates findings per fingerprint and emits ``alert.firing`` / ``alert.resolved``."""

    def __init__(
        self,
        registry: DeviceLookup,
        emit: Callable[[WebhookEvent], None],
        write_lines: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.registry = registry
        self._emit = emit
        self._write_lines = write_lines
        self.firing: dict[str, Finding] = {}
        self.raised = 0
        self.resolved = 0

    def process(self, findings: list[Finding]) -> list[AlertTransition]:
        """Apply findings; returns the alert transitions they caused."""
        transitions: list[AlertTransition] = []
        for f in findings:
            fp = f"{f.device_id}/{f.rule_id}"
            if f.state is FindingState.FIRING:
                if fp in self.firing:
                    continue
                self.firing[fp] = f
                self.raised += 1
            else:
                if self.firing.pop(fp, None) is None:
                    continue
                self.resolved += 1
            transitions.append(AlertTransition(fp, f))
            log.info("alert %s device=%s rule=%s value=%s",
                     f.state.value, f.device_id, f.rule_id, f.value)
            self._emit(WebhookEvent.new(f"alert.{f.state.value}",
                                        {"alert": self._alert_doc(fp, f), "case": None}))
        if transitions and self._write_lines:
            self._write_lines([_line(t) for t in transitions])
        return transitions

    def _alert_doc(self, fingerprint: str, f: Finding) -> dict[str, Any]:
        device = self.registry.get(f.device_id)
        return {
            "fingerprint": fingerprint,
            "state": f.state.value,
            "rule": f.rule_id,
            "severity": f.severity.value,
            "device": f.device_id,
            "device_type": device.type if device else None,
            "grid": device.grid if device else None,
            "district": device.district if device else None,
            "unit": device.unit if device else None,
            "metric": f.metric,
            "value": f.value,
            "at": datetime.fromtimestamp(f.ts_ns / 1e9, UTC).isoformat().replace("+00:00", "Z"),
        }


def _line(t: AlertTransition) -> str:
    f = t.finding
    tags = f"device={escape_tag(f.device_id)},rule={escape_tag(f.rule_id)},severity={f.severity}"
    fields = (f"state={escape_string_field(f.state.value)},"
              f"firing={1 if f.state is FindingState.FIRING else 0}i,value={f.value!r}")
    return f"lifeline_alert,{tags} {fields} {f.ts_ns}"
