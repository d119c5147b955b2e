"""Outbox rows: one event for one endpoint, and its delivery state."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class DeliveryStatus(StrEnum):
    """State of one outbox row."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    CANCELLED = "cancelled"  # an escalation step no longer needed (acknowledged in time)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row: an event for one endpoint."""

    id: int
    delivery_id: str
    event_id: str
    event: str
    payload: dict[str, Any]
    status: DeliveryStatus
    attempts: int
    created_ns: int
    next_attempt_ns: int
    last_error: str
    last_status: int | None
    delivered_ns: int | None
    delivered_via: str
    case_id: int | None
    target: str = ""  # "" = the dispatch webhook, else a notification channel
