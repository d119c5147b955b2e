"""The service's persistent MQTT session: notice when it is lost and raise a service alert.

The broker queues QoS 1/2 messages for the service's session while it is away; a
reconnect that finds no session (``session present`` false: another client connected
with the service's client id, or the broker restarted without its persistence file)
or a disconnect for a session takeover means those messages are gone. Each is
counted (``lifeline_ingest_mqtt_sessions_lost{reason}``), logged as a WARNING and
raises the service alert ``service:mqtt_session`` (device = the service's client
id); a later reconnect that finds the session kept resolves it.

Across restarts of the service the expectation comes from a small state file: the
session should still be on the broker when the service was last connected to the same
broker, with the same client id and user, less than ``mqtt.session_expiry`` ago.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

import orjson

from alerts.lifecycle.model import SERVICE_RULE_PREFIX
from ingest.metrics import IngestCounters
from ingest.subscriber import MqttOptions
from rules.model import Finding, FindingState, Severity

log = logging.getLogger(__name__)

SESSION_RULE: Final = SERVICE_RULE_PREFIX + "mqtt_session"
"""Rule id of the service alert (fingerprint: ``<client id>/service:mqtt_session``)."""
SESSION_SEVERITY: Final = Severity.MAJOR
STATE_FILE: Final = "mqtt_session.json"
_RECORD_EVERY_S: Final = 5.0


class SessionCounts(Protocol):
    """What the watch reads from a subscriber (in-process or network process)."""

    @property
    def connected(self) -> bool:
        """A connection to the broker is up."""
        ...

    @property
    def sessions_lost(self) -> int:
        """Connects that expected the session and found none."""
        ...

    @property
    def sessions_taken_over(self) -> int:
        """Disconnects: another client connected with the service's client id."""
        ...

    @property
    def sessions_kept(self) -> int:
        """Connects that expected the session and found it."""
        ...


class SessionWatch:
    """Turns the subscriber's session counters into a self-metric, a warning and the
    service alert; remembers the session across restarts (``run_dir``/``STATE_FILE``)."""

    def __init__(self, options: MqttOptions, run_dir: Path, counters: IngestCounters,
                 raise_findings: Callable[[Sequence[Finding]], None],
                 now_ns: Callable[[], int]) -> None:
        self.options = options
        self.path = run_dir / STATE_FILE
        self.counters = counters
        self._raise = raise_findings
        self._now_ns = now_ns
        self._seen = (0, 0, 0)  # (lost, taken over, kept) already handled
        self.firing = False
        self._recorded_at = 0.0
        self._persistent = not options.clean_start and (
            options.session_expiry_s > 0 or options.protocol != 5)

    def _identity(self) -> dict[str, object]:
        o = self.options
        return {"broker": f"{o.host}:{o.port}", "client_id": o.client_id, "user": o.username}

    def expected_at_start(self) -> bool:
        """True when the broker should still hold the session of the service's last run."""
        if not self._persistent:
            return False
        try:
            state = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return False
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("MQTT session state %s unreadable (%s): not expecting a session",
                        self.path, exc)
            return False
        if not isinstance(state, dict) or any(state.get(k) != v
                                              for k, v in self._identity().items()):
            return False
        connected_ns = state.get("connected_ns")
        if not isinstance(connected_ns, int):
            return False
        return time.time_ns() < connected_ns + self.options.session_expiry_s * 1_000_000_000

    def record(self) -> None:
        """Note that the session is on the broker now (connected); errors are logged."""
        if not self._persistent:
            return
        self._recorded_at = time.monotonic()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_bytes(orjson.dumps(self._identity() | {"connected_ns": time.time_ns()}))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot record the MQTT session in %s: %s", self.path, exc)

    def check(self, sub: SessionCounts) -> None:
        """Count, warn and raise (or resolve) the service alert on what changed since the
        last call; record the session now and then while connected (run loop)."""
        lost, taken, kept = sub.sessions_lost, sub.sessions_taken_over, sub.sessions_kept
        seen_lost, seen_taken, seen_kept = self._seen
        if (lost, taken, kept) == self._seen:
            if sub.connected and time.monotonic() - self._recorded_at >= _RECORD_EVERY_S:
                self.record()
            return
        self._seen = (lost, taken, kept)
        reasons = {"not_present": lost - seen_lost, "taken_over": taken - seen_taken}
        for reason, n in reasons.items():
            self.counters.sessions_lost[reason] += n
        o = self.options
        if lost > seen_lost or taken > seen_taken:
            what = ", ".join(f"{r}: {n}" for r, n in reasons.items() if n)
            log.warning(
                "MQTT session of client id %r (user %r) at %s:%d lost (%s; %d so far): "
                "messages the broker had queued for the service are gone; raising the "
                "service alert %s", o.client_id, o.username, o.host, o.port, what,
                sum(self.counters.sessions_lost.values()), SESSION_RULE)
            self.firing = True
            self._raise([self._finding(FindingState.FIRING,
                                       float(sum(self.counters.sessions_lost.values())))])
        elif kept > seen_kept:  # resolves the alert if one is open (an earlier run's too)
            self.firing = False
            self._raise([self._finding(FindingState.RESOLVED, 0.0)])
        if sub.connected:
            self.record()

    def _finding(self, state: FindingState, value: float) -> Finding:
        return Finding(rule_id=SESSION_RULE, device_id=self.options.client_id,
                       metric="mqtt_session", state=state, severity=SESSION_SEVERITY,
                       ts_ns=self._now_ns(), value=value)
