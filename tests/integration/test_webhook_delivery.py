"""Webhook delivery to a real HTTP receiver: headers, signature, retry rules."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from alerts.delivery.signing import verify
from alerts.delivery.webhook import HttpNotifier, WebhookEvent
from alerts.errors import DeliveryError
from devtools.harness import free_port
from devtools.receiver import WebhookReceiver

pytestmark = pytest.mark.integration
SECRET = "0123456789abcdef-secret"


class Scripted:
    """An HTTP server answering with a scripted list of status codes, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_signed_headers_and_non_retryable_4xx() -> None:
    server = Scripted([503, 400])
    try:
        notifier = HttpNotifier(server.url, SECRET)
        event = WebhookEvent.new("alert.firing", {"alert": {"device": "d"}, "case": None})
        with pytest.raises(DeliveryError) as first:
            notifier.send(event)
        assert first.value.retryable and first.value.status == 503
        with pytest.raises(DeliveryError) as second:
            notifier.send(event)
        assert not second.value.retryable and second.value.status == 400
        notifier.send(event)
        assert {h["x-lifeline-delivery"] for h, _ in server.requests} == {event.delivery_id}
        headers, body = server.requests[-1]
        assert headers["x-lifeline-event"] == "alert.firing"
        assert verify(SECRET, headers["x-lifeline-timestamp"], body,
                      headers["x-lifeline-signature"])
    finally:
        server.close()


def test_connection_refused_is_retryable() -> None:
    refused = HttpNotifier(f"http://127.0.0.1:{free_port()}/x", SECRET, timeout=1)
    with pytest.raises(DeliveryError) as info:
        refused.send(WebhookEvent.new("alert.firing", {"case": None}))
    assert info.value.retryable


def test_receiver_rejects_bad_signatures_and_deduplicates() -> None:
    receiver = WebhookReceiver(SECRET).start()
    try:
        good = HttpNotifier(receiver.url, SECRET)
        event = WebhookEvent.new("alert.firing", {"case": None})
        good.send(event)
        good.send(event)  # a retry: same delivery id
        with pytest.raises(DeliveryError) as info:
            HttpNotifier(receiver.url, "wrong-secret-wrong-secret").send(event)
        assert info.value.status == 401 and not info.value.retryable
        time.sleep(0.05)
        assert len(receiver.events()) == 1
        assert receiver.log.duplicates == 1
        assert receiver.log.bad_signatures == 1
    finally:
        receiver.stop()
