"""Acknowledge links: ``{kind}:{id}:{expires}:{nonce}`` signed with HMAC-SHA256, valid
until ``expires`` and used once (``notify_ack_links``); a second use answers what the
first did, without acting again."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.notify.store import ack_links

KINDS = ("alert", "case")


class LinkError(ValueError):
    """The link is malformed, forged or expired."""


@dataclass(frozen=True, slots=True)
class AckToken:
    """A verified link: what to acknowledge, until when, its single-use nonce."""

    kind: str
    object_id: int
    expires_s: int
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    """Makes and checks acknowledge tokens."""

    def __init__(self, secret: str, base_url: str, ttl_s: int) -> None:
        self._key = hashlib.sha256(b"lifeline-ack\n" + secret.encode()).digest()
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s

    def token(self, kind: str, object_id: int, now_s: int) -> str:
        """A new token for ``kind`` ("alert"/"case") ``object_id``."""
        body = f"{kind}:{object_id}:{now_s + self.ttl_s}:{secrets.token_hex(12)}".encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()
        return f"{_b64(body)}.{_b64(mac)}"

    def link(self, kind: str, object_id: int, now_s: int) -> str:
        """The URL of the confirmation page for a new token."""
        token = quote(self.token(kind, object_id, now_s))
        return f"{self.base_url}/api/v1/notify/ack?token={token}"

    def verify(self, token: str, now_s: int) -> AckToken:
        """The token's content; :class:`LinkError` when forged, malformed or expired."""
        try:
            body_b64, mac_b64 = token.split(".")
            body, mac = _unb64(body_b64), _unb64(mac_b64)
        except ValueError as exc:
            raise LinkError("malformed link") from exc
        if not hmac.compare_digest(hmac.new(self._key, body, hashlib.sha256).digest(), mac):
            raise LinkError("bad link signature")
        try:
            kind, oid, exp, nonce = body.decode().split(":")
            parsed = AckToken(kind, int(oid), int(exp), nonce)
        except ValueError as exc:
            raise LinkError("malformed link") from exc
        if parsed.kind not in KINDS:
            raise LinkError("malformed link")
        if now_s > parsed.expires_s:
            raise LinkError("link expired")
        return parsed


def claim(engine: Engine, token: AckToken, now_ns: int) -> str | None:
    """Record the token as used; None when this is its first use, else the first use's
    outcome."""
    try:
        with engine.begin() as conn:
            conn.execute(ack_links.insert().values(nonce=token.nonce, kind=token.kind,
                                                   object_id=token.object_id, used_ns=now_ns,
                                                   outcome=""))
        return None
    except sa.exc.IntegrityError:
        with engine.connect() as conn:
            row = conn.execute(sa.select(ack_links.c.outcome).where(
                ack_links.c.nonce == token.nonce)).scalar_one_or_none()
        return str(row or "")


def record(engine: Engine, token: AckToken, outcome: str) -> None:
    """Keep the outcome of a token's first use."""
    with engine.begin() as conn:
        conn.execute(ack_links.update().where(ack_links.c.nonce == token.nonce)
                     .values(outcome=outcome[:300]))
