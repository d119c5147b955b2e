"""Case actions applied once: per idempotency key (the first answer is stored with it,
``case_callback_keys``) and, for a keyless signed callback, per signature
(``case_callback_nonces``)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerts.cases.book import CaseBook
from alerts.cases.model import Case
from alerts.cases.store import callback_keys, callback_nonces
from alerts.cases.workflow import Action
from alerts.errors import ConflictError, IllegalTransitionError, ReplayError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A verified signed callback: its signature (hex) may be used once while its
    timestamp ``signed_at`` (epoch seconds) is within ``window_ns`` of the clock."""

    signature: str
    signed_at: int
    window_ns: int


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """The answer to an action: ``status`` 200 with ``case`` when applied now; on a replay of
    an idempotency key, the stored first answer (``status`` and JSON ``body``)."""

    status: int
    body: bytes
    replayed: bool
    case: Case | None = None


def claim_signature(engine: Engine, signed: SignedRequest, case_id: int, now_ns: int) -> None:
    """Record a signature as used (committed at once, so a refused or failed request uses
    it up too); raises :class:`ReplayError` when it was seen before. Signatures whose
    timestamp left the window are dropped here: the window refuses those anyway."""
    expired = -(-(now_ns - signed.window_ns) // 1_000_000_000)  # ceil: older is refused
    try:
        with engine.begin() as conn:
            conn.execute(callback_nonces.delete().where(callback_nonces.c.signed_at < expired))
            conn.execute(callback_nonces.insert().values(
                signature=signed.signature, case_id=case_id, signed_at=signed.signed_at,
                seen_ns=now_ns))
    except sa.exc.IntegrityError as exc:
        raise ReplayError("this signed request was received before (replay); send an "
                          "Idempotency-Key to retry safely") from exc


def _stored(conn: Connection, key: str, case_id: int, digest: str) -> ActionOutcome | None:
    row = conn.execute(sa.select(callback_keys).where(callback_keys.c.key == key)).first()
    if row is None:
        return None
    if row.request_hash != digest or row.case_id != case_id:
        raise ConflictError(f"idempotency key {key!r} was used for another request")
    return ActionOutcome(int(row.status), row.response.encode(), replayed=True)


def apply_action(engine: Engine, book: CaseBook, case_id: int, action: Action, actor: str,
                 now_ns: int, *, note: str = "", external_id: str | None = None,
                 unit: str | None = None, key: str | None = None, request: bytes = b"",
                 signed: SignedRequest | None = None) -> ActionOutcome:
    """Apply an action once per idempotency ``key``, and a keyless ``signed`` request once
    per signature.

    The first answer to a key (applied: 200 and the case; refused by the workflow: 409 and
    the reason) is stored with it, in the transaction of the effect; the same key with the
    same ``request`` bytes on the same case returns that answer without applying anything,
    with another request it is a :class:`ConflictError`. Since a signature covers the key,
    a replayed keyed signature gets the stored answer (and a keyed request that failed
    otherwise, e.g. on a database error, can be retried with the same bytes). A keyless
    signature is used up by its first request, whatever the answer: a :class:`ReplayError`
    after that.
    """
    digest = hashlib.sha256(request).hexdigest()
    if key:
        with engine.connect() as conn:
            found = _stored(conn, key, case_id, digest)
        if found is not None:
            return found
    if signed is not None and not key:
        claim_signature(engine, signed, case_id, now_ns)
    try:
        with book.lock, engine.begin() as conn:
            if key and (found := _stored(conn, key, case_id, digest)) is not None:
                return found
            case = book.apply(conn, case_id, action, actor, now_ns, note=note,
                              external_id=external_id, unit=unit)
            body = orjson.dumps(case.doc())
            if key:
                conn.execute(callback_keys.insert().values(
                    key=key[:128], case_id=case_id, request_hash=digest,
                    response=body.decode(), status=200, created_ns=now_ns))
            return ActionOutcome(200, body, replayed=False, case=case)
    except IllegalTransitionError as exc:
        if key:
            _store_refusal(engine, key, case_id, digest, str(exc), now_ns)
        raise


def _store_refusal(engine: Engine, key: str, case_id: int, digest: str, reason: str,
                   now_ns: int) -> None:
    """Keep a workflow refusal as the key's first answer (unless a concurrent request with
    the key stored its own answer first)."""
    try:
        with engine.begin() as conn:
            conn.execute(callback_keys.insert().values(
                key=key[:128], case_id=case_id, request_hash=digest,
                response=orjson.dumps({"detail": reason}).decode(), status=409,
                created_ns=now_ns))
    except sa.exc.IntegrityError:
        log.info("idempotency key %r: an answer was stored concurrently", key)
