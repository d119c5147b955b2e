"""Masking of secrets in any text the service shows: settings, logs, API answers, errors.

Two sources of secrets: the configured ones (``SecretStr`` settings, passed in by value)
and credentials embedded in URLs (``https://user:pass@host/``, ``?token=…``), which may
come from any setting or from a foreign error message quoting a URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "********"

# scheme://user:password@  or  scheme://token@  (userinfo never holds '/', '@' or spaces)
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/@\s:?#]*)(?::(?P<password>[^/\s?#]*))?@")
# credentials passed as query parameters
_QUERY = re.compile(
    r"(?i)(?P<key>[?&;](?:password|passwd|pwd|pass|token|access_token|auth|secret|"
    r"api_?key|key|sign|signature)=)(?P<value>[^&;#\s\"']+)")


def _userinfo(match: re.Match[str]) -> str:
    user, password = match["user"], match["password"]
    if password is None:  # a lone user part is often a token (https://TOKEN@host)
        return f"{match['scheme']}{REDACTED}@" if user else match[0]
    return f"{match['scheme']}{user}:{REDACTED}@"


def mask_urls(text: str) -> str:
    """``text`` with every URL's password (or lone user token) and credential query value masked."""
    if "://" in text:
        text = _USERINFO.sub(_userinfo, text)
    if "=" in text:
        text = _QUERY.sub(lambda m: m["key"] + REDACTED, text)
    return text


class Redactor:
    """Masks the configured secrets and any URL credentials in a text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Short values would redact ordinary words; settings refuse short secrets anyway.
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """The masked text."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return mask_urls(text)
