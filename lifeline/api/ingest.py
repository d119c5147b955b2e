"""Dead-letter API: list and show (viewer), request a replay (admin)."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ingest.deadletter import DeadLetterStore, Reason, StoredDeadLetter
from lifeline.api.alerts import MAX_ID, RowId
from lifeline.api.deps import Admin, EngineDep, Viewer

router = APIRouter(prefix="/api/v1/dlq", tags=["dead letters"])

_REPLAYABLE = [r for r in Reason if r not in (Reason.WRITE_REJECTED, Reason.DLQ_OVERFLOW)]


class DeadLetterPublic(BaseModel):
    """One dead letter. ``payload`` is UTF-8 text when it decodes, else base64.

    ``payload_bytes`` is what is stored, ``payload_size`` what was received; a
    ``truncated`` letter (an oversized message, cut at ``ingest.max_payload_bytes``)
    is never replayed.
    """

    model_config = ConfigDict(frozen=True)

    id: int
    topic: str
    reason: Reason
    detail: str
    received_at_ns: int
    payload: str
    payload_encoding: Literal["utf-8", "base64"]
    payload_bytes: int
    payload_size: int
    truncated: bool


class DeadLettersPublic(BaseModel):
    """A page of dead letters, newest first; ``count`` is the total stored (of the reason)."""

    data: list[DeadLetterPublic]
    count: int


class DeadLetterReplayCreate(BaseModel):
    """Which letters to replay: explicit ``ids``, or the newest ``limit`` of a ``reason``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(default_factory=list,
                                                             max_length=10_000)
    reason: Reason | None = None
    limit: int = Field(default=10_000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _one_of(self) -> DeadLetterReplayCreate:
        if bool(self.ids) == (self.reason is not None):
            raise ValueError("give either ids or reason")
        if self.reason is not None and self.reason not in _REPLAYABLE:
            raise ValueError(f"letters of reason {self.reason.value} cannot be replayed")
        return self


class DeadLetterReplayPublic(BaseModel):
    """How many letters were marked; the running service replays them within a second."""

    marked: int


def _public(row: StoredDeadLetter) -> DeadLetterPublic:
    dl = row.letter
    try:
        text, encoding = dl.payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(dl.payload).decode(), "base64"
    return DeadLetterPublic(id=row.id, topic=dl.topic, reason=dl.reason, detail=dl.detail,
                            received_at_ns=dl.received_at_ns, payload=text,
                            payload_encoding=encoding,  # type: ignore[arg-type]
                            payload_bytes=len(dl.payload), payload_size=row.payload_size,
                            truncated=row.truncated)


@router.get("")
def list_dead_letters(
    _: Viewer,
    engine: EngineDep,
    reason: Reason | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> DeadLettersPublic:
    """Dead letters, newest first; page with ``before`` = the last id seen."""
    store = DeadLetterStore(engine)
    value = reason.value if reason else None
    rows = store.list(reason=value, limit=limit, before_id=before)
    return DeadLettersPublic(data=[_public(r) for r in rows], count=store.total(value))


@router.get("/{letter_id}", responses={404: {"description": "no such dead letter"}})
def show_dead_letter(_: Viewer, engine: EngineDep, letter_id: RowId) -> DeadLetterPublic:
    """One dead letter with its whole payload."""
    row = DeadLetterStore(engine).get(letter_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter with id {letter_id}")
    return _public(row)


@router.post("/replay", status_code=status.HTTP_202_ACCEPTED)
def replay_dead_letters(_: Admin, engine: EngineDep,
                        body: DeadLetterReplayCreate) -> DeadLetterReplayPublic:
    """Mark letters for replay through the same decoding path."""
    marked = DeadLetterStore(engine).request_replay(
        ids=body.ids, reason=body.reason.value if body.reason else None, limit=body.limit)
    return DeadLetterReplayPublic(marked=marked)
