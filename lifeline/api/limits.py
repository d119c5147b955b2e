"""Request body size limits for every route, answered with 413 naming the limit.

A pure ASGI middleware: a declared ``Content-Length`` over the limit is refused
before the app runs; a chunked body is counted as it is read and refused as
soon as it passes the limit (the app then sees an :class:`HTTPException` 413
from ``receive``, which FastAPI turns into the response).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOO_LARGE = 413


class BodyTooLargeError(HTTPException):
    """The request body passed its limit."""

    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(TOO_LARGE, f"request body larger than {limit} bytes ({setting})")


class BodyLimitMiddleware:
    """Caps request bodies: ``default`` bytes, or a per-path-prefix limit."""

    def __init__(self, app: ASGIApp, default: int, setting: str = "api.max_body_bytes",
                 per_path: Mapping[str, tuple[int, str]] | None = None) -> None:
        self.app = app
        self.default = (default, setting)
        self.per_path = dict(per_path or {})

    def limit_for(self, path: str) -> tuple[int, str]:
        """The limit of ``path`` and the setting that sets it."""
        for prefix, limit in self.per_path.items():
            if path == prefix or path.startswith(prefix + "/"):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse oversized bodies; pass everything else through untouched."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit_for(scope.get("path", ""))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, BodyTooLargeError(limit, setting))
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError(limit, setting)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, exc: BodyTooLargeError) -> None:
    body = orjson.dumps({"detail": exc.detail})
    await send({"type": "http.response.start", "status": exc.status_code,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
