"""A simulated dispatch system (城管 case system): receives the service's webhooks,
verifies their signatures, de-duplicates on the delivery id, and drives each dispatched
case through accept → handled after configurable delays — with some returns (退回) and
some late handling — by calling back ``POST /api/v1/cases/{id}/actions`` with an
idempotency key, signed with the shared secret in the v2 callback scheme (implemented here
from the documented canonical string, as a dispatch vendor would).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson

from common.retry import Backoff

log = logging.getLogger(__name__)

_CALLBACK_BACKOFF = Backoff(base_s=0.5, max_s=8.0)  # 0.5, 1, 2, 4, 8 s between attempts


def _sign(secret: str, timestamp: str, body: bytes) -> str:
    """v1, the service's webhooks: HMAC-SHA256 over ``"{timestamp}.{body}"``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def sign_callback(secret: str, path: str, key: str, timestamp: str, body: bytes) -> str:
    r"""v2, callbacks: HMAC-SHA256 over ``"v2\nPOST\n{path}\n{key}\n{timestamp}\n"``
    and the body bytes."""
    head = f"v2\nPOST\n{path}\n{key}\n{timestamp}\n".encode()
    return "v2=" + hmac.new(secret.encode(), head + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class DispatchPlan:
    """How the simulated units behave (delays in seconds, rates as fractions)."""

    accept_after_s: float = 2.0
    handle_after_s: float = 5.0
    return_rate: float = 0.1
    late_rate: float = 0.1
    late_extra_s: float = 10.0
    seed: int = 7

    def __post_init__(self) -> None:
        if min(self.accept_after_s, self.handle_after_s, self.late_extra_s) < 0:
            raise ValueError("delays must not be negative")
        if not (0 <= self.return_rate <= 1 and 0 <= self.late_rate <= 1):
            raise ValueError("rates are fractions between 0 and 1")


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted (signed, first-seen) webhook."""

    delivery_id: str
    event: str
    body: dict[str, Any]


@dataclass(slots=True)
class DispatchStats:
    """What the simulated dispatch system saw and did."""

    requests: int = 0
    duplicates: int = 0
    bad_signatures: int = 0
    malformed: int = 0
    callbacks_ok: int = 0
    callbacks_refused: int = 0
    callbacks_failed: int = 0
    accepted: int = 0
    handled: int = 0
    returned: int = 0
    late: int = 0
    by_event: dict[str, int] = field(default_factory=dict)


class DispatchSimulator:
    """A threaded HTTP server plus a scheduler thread that sends the callbacks."""

    def __init__(self, secret: str, api_url: str, plan: DispatchPlan | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.secret = secret
        self.api_url = api_url.rstrip("/")
        self.plan = plan or DispatchPlan()
        self.stats = DispatchStats()
        self.received: list[Received] = []
        self._seen: set[str] = set()
        self._dispatches: dict[int, int] = {}
        self._lock = threading.Lock()
        self._rng = random.Random(self.plan.seed)
        self._queue: list[tuple[float, int, int, str, str]] = []
        self._seq = 0
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._http = httpx.Client(timeout=5.0)
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20))
                code = sim._accept({k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("dispatch: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="dispatch-http",
                             daemon=True),
            threading.Thread(target=self._schedule_loop, name="dispatch-units", daemon=True),
        ]

    @property
    def url(self) -> str:
        """Where the service should post its webhooks."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/lifeline"

    def start(self) -> DispatchSimulator:
        """Serve and schedule in background threads."""
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop serving and scheduling (pending callbacks are dropped)."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._threads[1].join(5)
        self._http.close()

    def events(self, name: str | None = None) -> list[Received]:
        """Accepted webhooks, optionally only those named ``name``."""
        with self._lock:
            return [e for e in self.received if name is None or e.event == name]

    def pending(self) -> int:
        """Callbacks still scheduled."""
        with self._lock:
            return len(self._queue)

    # -- webhooks in -------------------------------------------------------------------------
    def _accept(self, headers: dict[str, str], body: bytes) -> int:
        delivery = headers.get("x-lifeline-delivery", "")
        ts = headers.get("x-lifeline-timestamp", "")
        sig = headers.get("x-lifeline-signature", "")
        with self._lock:
            self.stats.requests += 1
            if not sig or not hmac.compare_digest(_sign(self.secret, ts, body), sig):
                self.stats.bad_signatures += 1
                return 401
            if delivery in self._seen:
                self.stats.duplicates += 1
                return 200
            try:
                doc = orjson.loads(body)
                event = str(doc["event"])
                case = doc.get("case") or {}
                case_id = int(case["id"]) if case else None
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                self.stats.malformed += 1
                return 400
            self._seen.add(delivery)
            self.received.append(Received(delivery, event, doc))
            self.stats.by_event[event] = self.stats.by_event.get(event, 0) + 1
            if event == "case.dispatched" and case_id is not None:
                self._plan_case(case_id)
        return 200

    def _plan_case(self, case_id: int) -> None:
        """Schedule a unit's work for one dispatch (lock held)."""
        n = self._dispatches.get(case_id, 0) + 1
        self._dispatches[case_id] = n
        now = time.monotonic()
        p = self.plan
        self._push(now + p.accept_after_s, case_id, "accept", f"sim-{case_id}-{n}-accept")
        if n == 1 and self._rng.random() < p.return_rate:
            self._push(now + p.accept_after_s + p.handle_after_s / 2, case_id, "return",
                       f"sim-{case_id}-{n}-return")
            return
        late = self._rng.random() < p.late_rate
        delay = p.accept_after_s + p.handle_after_s + (p.late_extra_s if late else 0.0)
        self._push(now + delay, case_id, "handled", f"sim-{case_id}-{n}-handled")
        if late:
            self.stats.late += 1

    def _push(self, at: float, case_id: int, action: str, key: str) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, case_id, action, key))
        self._wake.notify_all()

    # -- callbacks out -----------------------------------------------------------------------
    def _schedule_loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and (not self._queue
                                          or self._queue[0][0] > time.monotonic()):
                    timeout = (self._queue[0][0] - time.monotonic()) if self._queue else 1.0
                    self._wake.wait(max(0.01, timeout))
                if self._stop:
                    return
                _, _, case_id, action, key = heapq.heappop(self._queue)
            self._callback(case_id, action, key)

    def _callback(self, case_id: int, action: str, key: str) -> None:
        body = orjson.dumps({"action": action, "actor": "sim-unit",
                             "external_id": f"CG-{case_id:06d}",
                             "note": f"simulated {action}"})
        path = f"/api/v1/cases/{case_id}/actions"
        for attempt in range(5):
            ts = str(int(time.time()))  # signed anew on every attempt
            headers = {"Content-Type": "application/json", "Idempotency-Key": key,
                       "X-Lifeline-Timestamp": ts,
                       "X-Lifeline-Signature": sign_callback(self.secret, path, key, ts, body)}
            try:
                resp = self._http.post(f"{self.api_url}{path}", content=body, headers=headers)
            except httpx.HTTPError as exc:
                log.debug("dispatch callback %s case %d failed: %s", action, case_id, exc)
                if self._stopping(_CALLBACK_BACKOFF.delay(attempt + 1)):
                    return
                continue
            if resp.status_code >= 500:
                if self._stopping(_CALLBACK_BACKOFF.delay(attempt + 1)):
                    return
                continue
            with self._lock:
                if resp.status_code == 200:
                    self.stats.callbacks_ok += 1
                    if action == "accept":
                        self.stats.accepted += 1
                    elif action == "handled":
                        self.stats.handled += 1
                    elif action == "return":
                        self.stats.returned += 1
                else:
                    self.stats.callbacks_refused += 1
                    log.info("dispatch callback %s case %d refused: %d %s", action, case_id,
                             resp.status_code, resp.text[:200])
            return
        with self._lock:
            self.stats.callbacks_failed += 1
        log.warning("dispatch callback %s case %d failed after 5 attempts", action, case_id)

    def _stopping(self, wait_s: float) -> bool:
        """Wait ``wait_s`` unless stopped; True when stopped."""
        with self._wake:
            if not self._stop:
                self._wake.wait(wait_s)
            return self._stop
