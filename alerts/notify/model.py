"""What a channel sends: one rendered message (possibly several events merged), and the
error a channel raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from alerts.errors import DeliveryError


class ChannelError(DeliveryError):
    """A channel send failed; ``throttled_s`` > 0 when the platform said "too fast" (the
    channel sends nothing more for that long)."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None,
                 throttled_s: float = 0.0) -> None:
        super().__init__(message, retryable=retryable, status=status)
        self.throttled_s = throttled_s


@dataclass(frozen=True, slots=True)
class Message:
    """One message for one channel: the same content in the formats channels need."""

    title: str
    markdown: str
    text: str
    html: str
    sms: str
    items: list[dict[str, Any]] = field(default_factory=list)
    severity: str = "info"
    ack_url: str = ""
    case_url: str = ""


class Channel(Protocol):
    """Sends one :class:`Message`; raises :class:`ChannelError` saying whether to retry."""

    name: str
    type: str

    def send(self, message: Message) -> None:
        """Deliver ``message`` once."""
        ...
