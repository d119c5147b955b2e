"""API tokens with roles: viewer < operator < admin. Tokens are kept only as SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import IntEnum

from lifeline.settings import ApiToken


class Role(IntEnum):
    """What a token may do; a higher role includes the lower ones."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling."""

    name: str
    role: Role


def token_digest(token: str) -> str:
    """SHA-256 hex digest of a token, as stored in the settings."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token."""
    return "ll_" + secrets.token_urlsafe(32)


class TokenStore:
    """Looks up a presented bearer token among the configured digests in constant time."""

    def __init__(self, tokens: list[ApiToken]) -> None:
        self._tokens = [(t.sha256, Principal(t.name, Role[t.role.upper()])) for t in tokens]

    def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, or None. Compares against every digest."""
        digest = token_digest(token)
        found: Principal | None = None
        for stored, principal in self._tokens:
            if hmac.compare_digest(stored, digest):
                found = principal
        return found
