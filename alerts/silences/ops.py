"""Silence operations behind the API: create (validated), list, expire."""

from __future__ import annotations

import logging

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.errors import AlertsError, NotFoundError
from alerts.silences.model import MATCHER_KEYS, Silence, SilenceKind
from alerts.silences.store import silence_from_row, silences

log = logging.getLogger(__name__)


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
