"""The MQTT topic scheme: ``{prefix}/{device}/{kind}``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from devices.model import valid_device_id


class TopicKind(StrEnum):
    """What a message on a device topic carries."""

    TELEMETRY = "telemetry"
    EVENT = "event"
    STATUS = "status"


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed device topic."""

    device_id: str
    kind: TopicKind


class TopicScheme:
    """Builds and parses the topics under one prefix."""

    def __init__(self, prefix: str = "lifeline") -> None:
        self.prefix = prefix.rstrip("/")
        self._parts = len(self.prefix.split("/"))

    def topic(self, device_id: str, kind: TopicKind) -> str:
        """The topic a device publishes ``kind`` messages on."""
        return f"{self.prefix}/{device_id}/{kind.value}"

    def subscription(self, kind: TopicKind) -> str:
        """The wildcard subscription covering every device's ``kind`` topic."""
        return f"{self.prefix}/+/{kind.value}"

    def parse(self, topic: str) -> DeviceTopic | None:
        """Parse ``topic``; None when it is outside the scheme."""
        parts = topic.split("/")
        if len(parts) != self._parts + 2 or "/".join(parts[: self._parts]) != self.prefix:
            return None
        device_id, kind = parts[self._parts], parts[self._parts + 1]
        if not valid_device_id(device_id) or kind not in TopicKind.__members__.values():
            return None
        return DeviceTopic(device_id=device_id, kind=TopicKind(kind))
