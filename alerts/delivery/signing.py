"""HMAC-SHA256 signatures of the webhook contract (docs/design.md).

Two schemes share the secret:

* v1, outgoing webhooks (``X-Lifeline-Signature: sha256=<hex>``): HMAC over
  ``"{timestamp}.{body}"`` (:func:`sign`, :func:`verify`);
* v2, the dispatch system's callbacks (``X-Lifeline-Signature: v2=<hex>``): HMAC over
  the lines ``v2``, method, path, idempotency key (empty line when none), timestamp,
  followed by the body bytes (:func:`callback_message`, :func:`sign_callback`,
  :func:`verify_callback`). It binds a signature to one request on one case.
"""

from __future__ import annotations

import hashlib
import hmac

CALLBACK_SCHEME = "v2"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256 over ``"{timestamp}.{body}"``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Constant-time check of a signature header value (any text: compared as bytes, since
    ``compare_digest`` refuses non-ASCII strings)."""
    expected = sign(secret, timestamp, body).encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))


def callback_message(method: str, path: str, key: str, timestamp: str, body: bytes) -> bytes:
    """The v2 canonical bytes: ``"v2\\n{METHOD}\\n{path}\\n{key}\\n{timestamp}\\n"`` (UTF-8)
    followed by the raw body; ``key`` is "" without an ``Idempotency-Key`` header."""
    head = "\n".join((CALLBACK_SCHEME, method.upper(), path, key, timestamp)) + "\n"
    return head.encode() + body


def sign_callback(secret: str, method: str, path: str, key: str, timestamp: str,
                  body: bytes) -> str:
    """``v2=<hex>`` of HMAC-SHA256 over :func:`callback_message`."""
    mac = hmac.new(secret.encode(), callback_message(method, path, key, timestamp, body),
                   hashlib.sha256)
    return f"{CALLBACK_SCHEME}={mac.hexdigest()}"


def verify_callback(secret: str, method: str, path: str, key: str, timestamp: str,
                    body: bytes, signature: str) -> bool:
    """Constant-time check of a v2 ``X-Lifeline-Signature`` value (any text)."""
    expected = sign_callback(secret, method, path, key, timestamp, body).encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))
