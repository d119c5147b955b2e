"""Write forwarding for active/standby HA: a node that is not the leader passes API writes
on to the leader.

A pure ASGI middleware, installed by :func:`lifeline.app.create_app` when the app runs
with an :class:`~lifeline.api.deps.HaView`. On a node that does not lead, a request with
method POST, PUT, PATCH or DELETE whose path starts with ``/api/`` is sent verbatim
(method, raw path, query string, body bytes, headers but the hop-by-hop ones, ``Host``
and ``Content-Length``) to the API URL the leader recorded in ``cluster_nodes.api_url``,
with ``X-Lifeline-Forwarded-By: <node id>``; the leader's status, body bytes and headers
(but the hop-by-hop ones, and ``Date`` and ``Server``, which this node's server sets)
come back, plus ``X-Lifeline-Leader: <url>``. Everything else
(reads, the probes, ``/metrics``) is answered locally, and so is every request on the
leader.

Refusals (JSON ``{"detail": ...}``):

* 503 + ``Retry-After: 1``: no leader is known (none holds the lease, it advertised no
  URL, or the database cannot be read), the leader cannot be reached (nothing was
  sent), or the request was forwarded already (forwards are never chained: a node that
  believed itself standby received it, so leadership is moving);
* 504: the leader did not answer in time after the request was sent, and 502: the
  connection broke after it was sent. The write may have happened: a retry with the
  same ``Idempotency-Key`` (or the same signed bytes) is answered without a second
  effect;
* 400: a path with ``.`` or ``..`` segments (it would not reach the leader as sent).

It is not an open proxy: the only destination is the recorded leader URL, and only
``/api/`` paths go there. The body limits (:class:`~lifeline.api.limits.BodyLimitMiddleware`,
installed outside this middleware) apply before anything is sent.
"""

from __future__ import annotations

import logging
import ssl
from typing import Final

import anyio.to_thread
import httpx
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from lifeline.api.deps import HaView
from lifeline.api.limits import BodyTooLargeError
from lifeline.errors import LifelineError
from lifeline.redaction import mask_urls

log = logging.getLogger(__name__)

FORWARDED_BY: Final = "X-Lifeline-Forwarded-By"
LEADER: Final = "X-Lifeline-Leader"
WRITE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PREFIX: Final = "/api/"
# RFC 9110 7.6.1 and the ones older proxies use; plus those a Connection header names
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"proxy-connection", b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade"})
# the body is read in full before forwarding: nothing to wait for a 100 Continue about
REQUEST_DROPPED: Final = frozenset({b"host", b"content-length", b"expect"})
# this node's server adds its own Date and Server (two of either would be invalid)
RESPONSE_DROPPED: Final = frozenset({b"content-length", b"date", b"server"})
CONNECT_TIMEOUT_S: Final = 2.0
TIMEOUT_S: Final = 30.0
MAY_HAVE_HAPPENED = ("the write may have happened: retry with the same Idempotency-Key "
                     "(or the same signed request) to get its answer without a second effect")

# documented on every write route when the app forwards (lifeline.app)
FORWARD_ERRORS: Final[dict[int | str, dict[str, str]]] = {
    400: {"description": "a path with '.' or '..' segments (not forwarded to the leader)"},
    502: {"description": "HA: the connection to the leader broke after the request was "
                         "sent; the write may have happened (retry with the same "
                         "Idempotency-Key)"},
    503: {"description": "HA: no leader known or reachable (Retry-After), or a request "
                         "already forwarded reached a standby"},
    504: {"description": "HA: the leader did not answer in time; the write may have "
                         "happened (retry with the same Idempotency-Key)"},
}


# reads of what only the leader holds in memory (its running rule engine): a standby
# has none, so it asks the leader
LEADER_READS: Final = frozenset({"/api/v1/rules"})


def forwarded(method: str, path: str) -> bool:
    """Whether a standby passes a request of ``method`` on ``path`` to the leader."""
    if method == "GET" and path in LEADER_READS:
        return True
    return method in WRITE_METHODS and path.startswith(PREFIX)


def _dot_segments(path: str) -> bool:
    return any(segment in (".", "..") for segment in path.split("/"))


def _without_hop_by_hop(headers: list[tuple[bytes, bytes]],
                        also: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    named = {name.strip().lower() for key, value in headers if key.lower() == b"connection"
             for name in value.split(b",")}
    drop = HOP_BY_HOP | also | named
    return [(k, v) for k, v in headers if k.lower() not in drop]


class ForwardMiddleware:
    """Forwards the writes a standby receives to the leader (see the module doc)."""

    def __init__(self, app: ASGIApp, ha: HaView, *,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 timeout_s: float = TIMEOUT_S) -> None:
        self.app = app
        self.ha = ha
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.timeout_s = timeout_s
        self._ssl = ssl.create_default_context()  # once: building one costs milliseconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer locally, or forward to the leader."""
        if (scope["type"] != "http" or not forwarded(scope["method"], scope["path"])
                or self.ha.is_leader()):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers", []))
        by = FORWARDED_BY.lower().encode()
        if any(k.lower() == by for k, _ in headers):
            await _answer(send, 503, "no leader: this node is not the leader and the request "
                          "was forwarded already (forwards are never chained); leadership "
                          "is changing, retry", retry=True)
            return
        if _dot_segments(scope["path"]):
            await _answer(send, 400, "a path with '.' or '..' segments is not forwarded to "
                          "the leader")
            return
        try:
            leader = await anyio.to_thread.run_sync(self.ha.leader_api_url)
        except LifelineError as exc:
            log.warning("forwarding %s %s: the leader cannot be looked up: %s",
                        scope["method"], scope["path"], exc)
            await _answer(send, 503, f"no leader: the leader cannot be looked up: {exc}",
                          retry=True)
            return
        if not leader:
            await _answer(send, 503, "no leader: no node holds the lease (or the leader "
                          "advertised no API URL); retry", retry=True)
            return
        try:
            body = await _read_body(receive)
        except BodyTooLargeError as exc:
            await _answer(send, exc.status_code, str(exc.detail), close=True)
            return
        if body is None:  # the client went away
            return
        await self._forward(scope, headers, body, leader, send)

    async def _forward(self, scope: Scope, headers: list[tuple[bytes, bytes]], body: bytes,
                       leader: str, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        masked = mask_urls(leader)
        try:
            url = httpx.URL(leader)
            raw = (url.raw_path.split(b"?")[0].rstrip(b"/")
                   + (scope.get("raw_path") or path.encode()))
            if scope.get("query_string"):
                raw += b"?" + scope["query_string"]
            request = httpx.Request(
                method, url.copy_with(raw_path=raw), content=body,
                headers=[*_without_hop_by_hop(headers, REQUEST_DROPPED),
                         (FORWARDED_BY.encode(), self.ha.node_id.encode())])
        except (httpx.InvalidURL, ValueError) as exc:
            await _answer(send, 503, f"no leader: its API URL {masked} is not usable: {exc}",
                          retry=True)
            return
        try:
            async with httpx.AsyncClient(timeout=self.timeout, verify=self._ssl,
                                         trust_env=False, follow_redirects=False) as client:
                response = await client.send(request, stream=True)
                try:
                    content = b"".join([chunk async for chunk in response.aiter_raw()])
                finally:
                    await response.aclose()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
                httpx.UnsupportedProtocol) as exc:
            log.warning("forwarding %s %s: leader %s unreachable: %s", method, path, masked,
                        exc)
            await _answer(send, 503, f"no leader: the leader {masked} is unreachable "
                          f"({type(exc).__name__}); nothing was sent, retry", retry=True,
                          leader=leader)
            return
        except httpx.TimeoutException as exc:
            log.warning("forwarding %s %s: leader %s timed out: %s", method, path, masked,
                        exc)
            await _answer(send, 504, f"the leader {masked} did not answer within "
                          f"{self.timeout_s:g}s; {MAY_HAVE_HAPPENED}", leader=leader)
            return
        except httpx.TransportError as exc:
            log.warning("forwarding %s %s: leader %s failed: %s", method, path, masked, exc)
            await _answer(send, 502, f"the connection to the leader {masked} broke "
                          f"({type(exc).__name__}); {MAY_HAVE_HAPPENED}", leader=leader)
            return
        log.debug("forwarded %s %s to %s: %d", method, path, masked, response.status_code)
        out = _without_hop_by_hop(list(response.headers.raw), RESPONSE_DROPPED)
        if response.status_code >= 200 and response.status_code not in (204, 304):
            out.append((b"content-length", str(len(content)).encode()))
        out.append((LEADER.lower().encode(), masked.encode()))
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": out})
        await send({"type": "http.response.body", "body": content})


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (the body limit counts it as it arrives); None when the
    client disconnected."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, detail: str, *, retry: bool = False,
                  leader: str | None = None, close: bool = False) -> None:
    body = orjson.dumps({"detail": mask_urls(detail)})
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if retry:
        headers.append((b"retry-after", b"1"))
    if leader is not None:
        headers.append((LEADER.lower().encode(), mask_urls(leader).encode()))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
