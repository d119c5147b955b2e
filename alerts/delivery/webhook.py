"""Webhook events and their delivery to the dispatch system."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import orjson

from alerts.delivery.signing import sign
from alerts.errors import DeliveryError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One event for the dispatch system; ``delivery_id`` is stable across retries."""

    event: str
    payload: dict[str, Any]
    event_id: str
    delivery_id: str

    @classmethod
    def new(cls, event: str, payload: dict[str, Any]) -> WebhookEvent:
        """A fresh event with new ids."""
        return cls(event=event, payload=payload, event_id=str(uuid.uuid4()),
                   delivery_id=str(uuid.uuid4()))

    def body(self, sent_at: datetime) -> bytes:
        """The JSON body: ``event_id``, ``event``, ``sent_at`` and the payload keys."""
        doc = {"event_id": self.event_id, "event": self.event,
               "sent_at": sent_at.isoformat().replace("+00:00", "Z"), **self.payload}
        return orjson.dumps(doc)


class Notifier(Protocol):
    """Delivers one event; raises :class:`DeliveryError` saying whether to retry."""

    def send(self, event: WebhookEvent) -> None:
        """Deliver ``event`` once."""
        ...


def is_retryable_status(status: int) -> bool:
    """Timeouts, rate limits and server errors are worth retrying; other 4xx are not."""
    return status >= 500 or status in RETRYABLE_STATUS


class HttpNotifier:
    """POSTs signed events to one URL."""

    def __init__(self, url: str, secret: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self._secret = secret
        self._client = httpx.Client(timeout=timeout)

    def send(self, event: WebhookEvent) -> None:
        """POST the event with the contract's headers."""
        now = datetime.now(UTC)
        body = event.body(now)
        timestamp = str(int(now.timestamp()))
        headers = {
            "Content-Type": "application/json",
            "X-Lifeline-Event": event.event,
            "X-Lifeline-Delivery": event.delivery_id,
            "X-Lifeline-Timestamp": timestamp,
            "X-Lifeline-Signature": sign(self._secret, timestamp, body),
        }
        try:
            resp = self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"timeout posting to {self.url}", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise DeliveryError(f"cannot reach {self.url}: {exc}", retryable=True) from exc
        if resp.status_code >= 300:
            raise DeliveryError(
                f"{self.url} answered HTTP {resp.status_code}",
                retryable=is_retryable_status(resp.status_code),
                status=resp.status_code,
            )

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


class GuardedNotifier:
    """A notifier that asks ``guard`` right before each send (active/standby: a node
    that no longer leads sends nothing; ``guard`` raises :class:`DeliveryError`)."""

    def __init__(self, inner: Notifier, guard: Callable[[], None]) -> None:
        self.inner = inner
        self.url: str = getattr(inner, "url", "")
        self._guard = guard

    def send(self, event: WebhookEvent) -> None:
        """Deliver ``event`` if the guard lets it."""
        self._guard()
        self.inner.send(event)

    def close(self) -> None:
        """Close the inner notifier's client."""
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
