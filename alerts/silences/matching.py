"""Which alerts a silence matches: glob patterns over the alert's labels."""

from __future__ import annotations

from fnmatch import fnmatchcase

from alerts.lifecycle.model import Alert
from alerts.silences.model import Silence


def matches(silence: Silence, alert: Alert) -> bool:
    """Every matcher (glob) matches the alert's labels."""
    labels = {"device": alert.device_id, "type": alert.device_type, "grid": alert.grid,
              "rule": alert.rule_id}
    return all(fnmatchcase(labels.get(k, ""), pattern) for k, pattern in silence.matchers.items())
