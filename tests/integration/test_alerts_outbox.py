"""The persistent webhook outbox against a real HTTP receiver that fails in scripted ways."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.model import DeliveryStatus
from alerts.outbox import DeliveryConfig, OutboxWorker, list_deliveries, resend
from alerts.schema import outbox
from alerts.signing import verify
from alerts.store import enqueue
from alerts.webhook import HttpNotifier
from lifeline.db import open_database
from lifeline.harness import free_port
from tests.support import wait_for

pytestmark = pytest.mark.integration
SECRET = "outbox-secret-0123456789"


class FlakyReceiver:
    """A real HTTP server: answers per delivery id from a script (a status code, "hang"
    = sleep past the client's timeout, then 200), verifies signatures and de-duplicates."""

    def __init__(self, default: int | str = 200, port: int = 0, hang_s: float = 1.5) -> None:
        self.script: dict[str, list[int | str]] = {}
        self.default = default
        self.hang_s = hang_s
        self.attempts: Counter[str] = Counter()
        self.accepted: list[tuple[str, str, dict[str, Any]]] = []
        self.duplicates = 0
        self.bad_signatures = 0
        self.active = 0
        self.max_active = 0
        self.delay_s = 0.0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code = outer.handle({k.lower(): v for k, v in self.headers.items()}, body)
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        delivery = headers.get("x-lifeline-delivery", "")
        with self._lock:
            self.attempts[delivery] += 1
            script = self.script.get(delivery)
            step = script.pop(0) if script else self.default
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            if step == "hang":
                time.sleep(self.hang_s)
                step = 200
            assert isinstance(step, int)
            if step >= 300:
                return step
            if not verify(SECRET, headers.get("x-lifeline-timestamp", ""), body,
                          headers.get("x-lifeline-signature", "")):
                with self._lock:
                    self.bad_signatures += 1
                return 401
            with self._lock:
                if any(d == delivery for d, _, _ in self.accepted):
                    self.duplicates += 1
                else:
                    self.accepted.append((delivery, headers.get("x-lifeline-event", ""),
                                          orjson.loads(body)))
            return 200
        finally:
            with self._lock:
                self.active -= 1

    def ids(self) -> list[str]:
        with self._lock:
            return [d for d, _, _ in self.accepted]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()




def add(engine: Engine, n: int, event: str = "case.updated") -> list[str]:
    with engine.begin() as conn:
        return [enqueue(conn, event, {"case": {"id": i}, "alert": None}, time.time_ns(), i)
                for i in range(n)]


def rows(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {r.delivery_id: r for r in conn.execute(sa.select(outbox))}


def worker(engine: Engine, url: str, **kw: Any) -> OutboxWorker:
    cfg = DeliveryConfig(**{"base_delay_s": 0.02, "max_delay_s": 0.2, "poll_interval_s": 0.02,
                            **kw})
    return OutboxWorker(engine, HttpNotifier(url, SECRET, timeout=0.5), config=cfg, seed=1)


def test_retry_rules_exactly_once_and_dead_letters(db_url: str) -> None:
    engine = open_database(db_url)
    rx = FlakyReceiver()
    ids = add(engine, 8)
    rx.script = {
        ids[0]: [503, 503, 500],          # 5xx: retried
        ids[1]: ["hang"],                 # timeout: retried; the late 200 makes a duplicate
        ids[2]: [400],                    # other 4xx: permanent → dead
        ids[3]: [429, 408],               # rate limit and request timeout: retried
        ids[4]: [503] * 50,               # never succeeds → dead after max_attempts
        ids[5]: [404],                    # permanent
        ids[6]: [502],
    }
    w = worker(engine, rx.url, max_attempts=5)
    w.start()
    try:
        assert wait_for(lambda: all(r.status != "pending" for r in rows(engine).values()))
        assert wait_for(lambda: rx.duplicates >= 1)  # the hung first attempt completes late
    finally:
        w.stop(timeout=2)
        rx.close()
    state = rows(engine)
    delivered = {d for d, r in state.items() if r.status == DeliveryStatus.DELIVERED.value}
    assert delivered == {ids[0], ids[1], ids[3], ids[6], ids[7]}
    assert sorted(rx.ids()) == sorted(delivered)  # each accepted exactly once
    assert rx.duplicates == rx.attempts[ids[1]] - 1 and rx.attempts[ids[1]] >= 2
    assert state[ids[0]].attempts == 4 and rx.attempts[ids[0]] == 4
    assert state[ids[3]].attempts == 3
    assert (state[ids[2]].status, state[ids[2]].attempts, state[ids[2]].last_status) == (
        "dead", 1, 400)
    assert (state[ids[5]].status, state[ids[5]].attempts) == ("dead", 1)
    assert (state[ids[4]].status, state[ids[4]].attempts, rx.attempts[ids[4]]) == ("dead", 5, 5)
    assert "HTTP 503" in state[ids[4]].last_error
    assert rx.bad_signatures == 0
    # every request of one event carried the same delivery and event id
    bodies = {d: b for d, _, b in rx.accepted}
    assert bodies[ids[0]]["event"] == "case.updated" and bodies[ids[0]]["case"] == {"id": 0}
    assert w.stats.dead == 3


def test_connection_refused_is_retried_then_dead_and_resend_keeps_the_id(db_url: str) -> None:
    engine = open_database(db_url)
    port = free_port()
    (delivery,) = add(engine, 1, "alert.firing")
    w = worker(engine, f"http://127.0.0.1:{port}/hook", max_attempts=3)
    w.start()
    try:
        assert wait_for(lambda: rows(engine)[delivery].status == "dead")
    finally:
        w.stop(timeout=1)
    row = rows(engine)[delivery]
    assert row.attempts == 3 and "cannot reach" in row.last_error
    dead, count = list_deliveries(engine, status=DeliveryStatus.DEAD)
    assert count == 1 and dead[0].delivery_id == delivery
    rx = FlakyReceiver(port=port)
    again = resend(engine, row.id, time.time_ns())
    assert again.status is DeliveryStatus.PENDING and again.delivery_id == delivery
    w2 = worker(engine, rx.url)
    w2.start()
    try:
        assert wait_for(lambda: rows(engine)[delivery].status == "delivered")
    finally:
        w2.stop(timeout=1)
        rx.close()
    assert rx.ids() == [delivery]


def test_max_age_dead_letters_old_rows(db_url: str) -> None:
    engine = open_database(db_url)
    rx = FlakyReceiver(default=503)
    (delivery,) = add(engine, 1)
    w = worker(engine, rx.url, max_attempts=1000, max_age_ns=300_000_000)
    w.start()
    try:
        assert wait_for(lambda: rows(engine)[delivery].status == "dead")
    finally:
        w.stop(timeout=1)
        rx.close()
    assert 1 <= rows(engine)[delivery].attempts < 1000


def test_per_endpoint_concurrency_limit(db_url: str) -> None:
    engine = open_database(db_url)
    rx = FlakyReceiver()
    rx.delay_s = 0.15
    ids = add(engine, 8)
    w = worker(engine, rx.url, concurrency=2)
    w.start()
    try:
        assert wait_for(lambda: len(rx.ids()) == 8)
    finally:
        w.stop(timeout=2)
        rx.close()
    assert rx.max_active == 2
    assert sorted(rx.ids()) == sorted(ids)


def test_fallback_endpoint_takes_over_while_primary_fails(db_url: str) -> None:
    engine = open_database(db_url)
    primary = FlakyReceiver(default=503)
    backup = FlakyReceiver()
    ids = add(engine, 5)
    cfg = DeliveryConfig(base_delay_s=0.02, max_delay_s=0.1, poll_interval_s=0.02,
                         max_attempts=1000, fallback_after_ns=200_000_000)
    w = OutboxWorker(engine, HttpNotifier(primary.url, SECRET, timeout=0.5),
                     fallback=HttpNotifier(backup.url, SECRET, timeout=0.5), config=cfg)
    w.start()
    try:
        assert wait_for(lambda: len(backup.ids()) == 5)
        # the primary recovers: a probe finds it, then new events go there again
        primary.default = 200
        for _ in range(50):
            (probe,) = add(engine, 1)
            assert wait_for(lambda: rows(engine)[probe].status == "delivered")  # noqa: B023
            if rows(engine)[probe].delivered_via == "primary":
                break
            time.sleep(0.05)
        (later,) = add(engine, 1)
        assert wait_for(lambda: rows(engine)[later].status == "delivered")
    finally:
        w.stop(timeout=2)
        primary.close()
        backup.close()
    state = rows(engine)
    assert set(ids) <= set(backup.ids())  # (early probes may have gone there too)
    assert {state[d].delivered_via for d in ids} == {"fallback"}
    assert state[later].delivered_via == "primary"
    assert later in primary.ids() and later not in backup.ids()


def test_rows_survive_a_new_worker_same_delivery_id(db_url: str) -> None:
    """A row left pending (the process died) is sent by the next worker, same id."""
    engine = open_database(db_url)
    ids = add(engine, 3)
    with engine.begin() as conn:  # as if one attempt had failed before the crash
        conn.execute(outbox.update().where(outbox.c.delivery_id == ids[0]).values(attempts=2))
    rx = FlakyReceiver()
    w = worker(engine, rx.url)
    w.start()
    try:
        assert wait_for(lambda: len(rx.ids()) == 3)
    finally:
        w.stop(timeout=1)
        rx.close()
    assert sorted(rx.ids()) == sorted(ids) and rows(engine)[ids[0]].attempts == 3
