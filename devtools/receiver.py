"""A real HTTP webhook receiver: verifies signatures, de-duplicates on delivery id.

Used by ``lifeline demo`` and by the tests.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from alerts.delivery.signing import verify

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """One accepted webhook request."""

    delivery_id: str
    event: str
    timestamp: str
    signature_valid: bool
    body: dict[str, Any]


@dataclass(slots=True)
class ReceiverLog:
    """Everything the receiver saw."""

    events: list[ReceivedEvent] = field(default_factory=list)
    duplicates: int = 0
    bad_signatures: int = 0
    requests: int = 0


class WebhookReceiver:
    """Threaded HTTP server on a loopback port that records signed webhook events."""

    def __init__(self, secret: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.secret = secret
        self.log = ReceiverLog()
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status = receiver._accept(dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("receiver: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="receiver",
                                        daemon=True)

    @property
    def url(self) -> str:
        """The URL to post webhooks to."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/lifeline"

    def start(self) -> WebhookReceiver:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down."""
        self._server.shutdown()
        self._server.server_close()

    def events(self, name: str | None = None) -> list[ReceivedEvent]:
        """Accepted events (de-duplicated), optionally only those named ``name``."""
        with self._lock:
            return [e for e in self.log.events if name is None or e.event == name]

    def _accept(self, headers: dict[str, str], body: bytes) -> int:
        norm = {k.lower(): v for k, v in headers.items()}
        delivery = norm.get("x-lifeline-delivery", "")
        timestamp = norm.get("x-lifeline-timestamp", "")
        signature = norm.get("x-lifeline-signature", "")
        valid = bool(signature) and verify(self.secret, timestamp, body, signature)
        with self._lock:
            self.log.requests += 1
            if not valid:
                self.log.bad_signatures += 1
                return 401
            if delivery in self._seen:
                self.log.duplicates += 1
                return 200
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                return 400
            self._seen.add(delivery)
            self.log.events.append(
                ReceivedEvent(delivery, norm.get("x-lifeline-event", ""), timestamp, valid, doc)
            )
        return 200
