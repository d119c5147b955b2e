"""Operations behind the API: acknowledgement, silences, case actions with idempotency keys,
and filtered listings."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerts.cases import CaseBook, overdue_stage
from alerts.errors import (
    AlertsError,
    ConflictError,
    IllegalTransitionError,
    NotFoundError,
    ReplayError,
)
from alerts.model import (
    MATCHER_KEYS,
    Alert,
    AlertState,
    Case,
    CaseState,
    HistoryEntry,
    Silence,
    SilenceKind,
)
from alerts.schema import alerts, callback_keys, callback_nonces, cases, silences
from alerts.store import (
    alert_from_row,
    case_from_row,
    case_history_of,
    get_alert,
    get_case,
    silence_from_row,
)
from alerts.workflow import Action
from rules.model import Severity

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Filter of alert listings."""

    state: AlertState | None = None
    device: str | None = None
    grid: str | None = None
    rule: str | None = None
    severity: Severity | None = None
    acked: bool | None = None
    case_id: int | None = None
    limit: int = 100
    offset: int = 0


def list_alerts(engine: Engine, f: AlertFilter) -> tuple[list[Alert], int]:
    """Alerts matching ``f``, most recently changed first, and the total count."""
    cond: list[Any] = []
    if f.state is not None:
        cond.append(alerts.c.state == f.state.value)
    if f.device:
        cond.append(alerts.c.device_id == f.device)
    if f.grid:
        cond.append(alerts.c.grid == f.grid)
    if f.rule:
        cond.append(alerts.c.rule_id == f.rule)
    if f.severity is not None:
        cond.append(alerts.c.severity == f.severity.value)
    if f.acked is not None:
        cond.append(alerts.c.acked_ns.is_not(None) if f.acked else alerts.c.acked_ns.is_(None))
    if f.case_id is not None:
        cond.append(alerts.c.case_id == f.case_id)

    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(alerts).where(*cond)
                             ).scalar_one()
        rows = conn.execute(sa.select(alerts).where(*cond)
                            .order_by(alerts.c.changed_ns.desc(), alerts.c.id.desc())
                            .limit(f.limit).offset(f.offset))
        return [alert_from_row(r) for r in rows], int(total)


def ack_alert(engine: Engine, alert_id: int, who: str, note: str, now_ns: int) -> Alert:
    """Acknowledge an alert (who, when, note)."""
    with engine.begin() as conn:
        get_alert(conn, alert_id)
        conn.execute(alerts.update().where(alerts.c.id == alert_id).values(
            acked_by=who[:64], acked_ns=now_ns, ack_note=note[:1000]))
        log.info("alert %d acknowledged by %s", alert_id, who)
        return get_alert(conn, alert_id)


def unack_alert(engine: Engine, alert_id: int, who: str) -> Alert:
    """Remove an acknowledgement."""
    with engine.begin() as conn:
        get_alert(conn, alert_id)
        conn.execute(alerts.update().where(alerts.c.id == alert_id).values(
            acked_by="", acked_ns=None, ack_note=""))
        log.info("alert %d acknowledgement removed by %s", alert_id, who)
        return get_alert(conn, alert_id)


def create_silence(engine: Engine, *, kind: SilenceKind, matchers: dict[str, str],
                   starts_ns: int, ends_ns: int, created_by: str, comment: str,
                   now_ns: int) -> Silence:
    """Store a silence or maintenance window (validated: known matcher keys, end > start)."""
    unknown = set(matchers) - set(MATCHER_KEYS)
    if unknown:
        raise AlertsError(f"unknown matcher keys {sorted(unknown)}; use {list(MATCHER_KEYS)}")
    if not matchers:
        raise AlertsError("a silence needs at least one matcher")
    if ends_ns <= starts_ns:
        raise AlertsError("a silence must end after it starts")
    with engine.begin() as conn:
        sid = conn.execute(silences.insert().values(
            kind=kind.value, matchers=orjson.dumps(matchers).decode(), starts_ns=starts_ns,
            ends_ns=ends_ns, created_by=created_by[:100], comment=comment[:1000],
            created_ns=now_ns).returning(silences.c.id)).scalar_one()
        log.info("%s %d by %s: %s (%s)", kind.value, sid, created_by, matchers, comment)
        return silence_from_row(conn.execute(sa.select(silences).where(silences.c.id == sid))
                                .one())


def list_silences(engine: Engine, *, active_at: int | None = None,
                  include_expired: bool = False, now_ns: int) -> list[Silence]:
    """Silences, newest first; without ``include_expired`` only those not yet ended."""
    query = sa.select(silences).order_by(silences.c.id.desc())
    if not include_expired:
        query = query.where(silences.c.ends_ns > now_ns)
    if active_at is not None:
        query = query.where(silences.c.starts_ns <= active_at, silences.c.ends_ns > active_at)
    with engine.connect() as conn:
        return [silence_from_row(r) for r in conn.execute(query)]


def expire_silence(engine: Engine, silence_id: int, who: str, now_ns: int) -> Silence:
    """End a silence now."""
    with engine.begin() as conn:
        row = conn.execute(sa.select(silences).where(silences.c.id == silence_id)).first()
        if row is None:
            raise NotFoundError(f"silence {silence_id} not found")
        if row.ends_ns > now_ns:
            conn.execute(silences.update().where(silences.c.id == silence_id).values(
                ends_ns=max(now_ns, row.starts_ns + 1) if row.starts_ns < now_ns else now_ns))
        log.info("silence %d expired by %s", silence_id, who)
        return silence_from_row(conn.execute(
            sa.select(silences).where(silences.c.id == silence_id)).one())


@dataclass(frozen=True, slots=True)
class CaseFilter:
    """Filter of case listings."""

    state: CaseState | None = None
    grid: str | None = None
    unit: str | None = None
    severity: Severity | None = None
    device_type: str | None = None
    overdue: bool | None = None
    limit: int = 100
    offset: int = 0


def list_cases(engine: Engine, f: CaseFilter, now_ns: int) -> tuple[list[Case], int]:
    """Cases matching ``f``, newest first; ``overdue`` also counts deadlines missed now."""
    cond: list[Any] = []
    if f.state is not None:
        cond.append(cases.c.state == f.state.value)
    if f.grid:
        cond.append(cases.c.grid == f.grid)
    if f.unit:
        cond.append(cases.c.unit == f.unit)
    if f.severity is not None:
        cond.append(cases.c.severity == f.severity.value)
    if f.device_type:
        cond.append(cases.c.device_type == f.device_type)
    with engine.connect() as conn:
        rows = [case_from_row(r) for r in conn.execute(
            sa.select(cases).where(*cond).order_by(cases.c.id.desc()))]
    if f.overdue is not None:
        rows = [c for c in rows
                if (c.overdue or overdue_stage(c, now_ns) is not None) == f.overdue]
    return rows[f.offset:f.offset + f.limit], len(rows)


def case_with_history(engine: Engine, case_id: int) -> tuple[Case, list[HistoryEntry],
                                                            list[Alert]]:
    """A case, its audit history and its alerts."""
    with engine.connect() as conn:
        case = get_case(conn, case_id)
        rows = conn.execute(sa.select(alerts).where(alerts.c.case_id == case_id)
                            .order_by(alerts.c.id))
        return case, case_history_of(conn, case_id), [alert_from_row(r) for r in rows]


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
