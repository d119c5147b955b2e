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

from alerts.delivery.model import DeliveryStatus
from alerts.delivery.ops import list_deliveries, resend
from alerts.delivery.outbox import DeliveryConfig, OutboxWorker
from alerts.delivery.signing import verify
from alerts.delivery.store import enqueue, outbox
from alerts.delivery.webhook import HttpNotifier
from devtools.harness import free_port
from lifeline.db import open_database
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
        self.requests: list[tuple[str, int | str]] = []  # (delivery id, scripted answer)
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
            self.requests.append((delivery, step))
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


# -- delivery order per case, outages --------------------------------------------------------

EVENTS = ("case.reported", "case.registered", "case.dispatched", "case.updated", "case.closed")


class SimClock:
    """The worker's clock, moved by the test only (simulated time)."""

    def __init__(self, start_ns: int) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)


def put(engine: Engine, items: list[tuple[str, int, int]], now_ns: int) -> list[str]:
    """Enqueue (kind, id, seq) events: kind "case" (with its case id) or "alert" (no case)."""
    with engine.begin() as conn:
        out = []
        for kind, key, seq in items:
            if kind == "case":
                out.append(enqueue(conn, EVENTS[seq % len(EVENTS)],
                                   {"case": {"id": key}, "alert": None, "seq": seq}, now_ns, key))
            else:
                out.append(enqueue(conn, "alert.firing" if seq % 2 == 0 else "alert.resolved",
                                   {"alert": {"id": key}, "case": None, "seq": seq}, now_ns))
        return out


def seqs_by_key(rx: FlakyReceiver) -> dict[tuple[str, int], list[int]]:
    """The ``seq`` of each accepted event per case / alert, in the order accepted."""
    out: dict[tuple[str, int], list[int]] = {}
    with rx._lock:
        accepted = list(rx.accepted)
    for _, _, body in accepted:
        key = ("case", body["case"]["id"]) if body["case"] else ("alert", body["alert"]["id"])
        out.setdefault(key, []).append(body["seq"])
    return out


def test_a_30_minute_outage_loses_nothing_and_keeps_the_order_per_case(db_url: str) -> None:
    """Default retry rules, concurrency 4, the receiver down (connection refused) for 30
    simulated minutes with a service restart in the middle: once it is back, every event
    arrives exactly once, and the events of each case (or case-less alert) in order."""
    clock = SimClock(time.time_ns())
    engine = open_database(db_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    cfg = DeliveryConfig(poll_interval_s=0.01)  # otherwise the defaults
    assert (cfg.concurrency, cfg.max_delay_s) == (4, 300.0)

    def start_worker(eng: Engine) -> OutboxWorker:
        w = OutboxWorker(eng, HttpNotifier(url, SECRET, timeout=0.5), config=cfg, clock=clock,
                         seed=7)
        w.start()
        return w

    def run(sim_s: float, step_s: float = 10.0) -> None:
        for _ in range(int(sim_s / step_s)):
            clock.advance(step_s)
            time.sleep(0.005)

    keys = [("case", c) for c in range(1, 13)] + [("alert", a) for a in range(101, 105)]
    ids: list[str] = []
    w = start_worker(engine)
    rx: FlakyReceiver | None = None
    try:
        for seq in range(5):  # every 4 simulated minutes, a new event of each case
            ids += put(engine, [(k, i, seq) for k, i in keys if k == "case" or seq < 2], clock())
            w.wake()
            run(240)
            if seq == 2:  # the service restarts in the middle of the outage
                w.stop(timeout=2)
                engine = open_database(db_url)
                w = start_worker(engine)
        run(600)  # 30 minutes down
        state = rows(engine)
        assert {r.status for r in state.values()} == {"pending"}
        assert max(r.attempts for r in state.values()) > 10  # the old default gave up at 10
        rx = FlakyReceiver(port=port)
        rx.delay_s = 0.01
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                r.status == "delivered" for r in rows(engine).values()):
            run(10)
            time.sleep(0.02)
    finally:
        w.stop(timeout=2)
        if rx is not None:
            rx.close()
    assert rx is not None
    state = rows(engine)
    assert {d: r.status for d, r in state.items()} == dict.fromkeys(ids, "delivered")
    assert sorted(rx.ids()) == sorted(ids) and rx.duplicates == 0
    assert seqs_by_key(rx) == {(k, i): list(range(5 if k == "case" else 2)) for k, i in keys}
    assert rx.max_active <= 4
    assert clock() - min(r.created_ns for r in state.values()) < 45 * 60 * 10**9


def test_a_blocked_case_holds_up_only_itself(db_url: str) -> None:
    """The first event of case 1 keeps failing: its later events wait, while the other
    cases are delivered concurrently; once it goes through, case 1 follows in order."""
    engine = open_database(db_url)
    rx = FlakyReceiver()
    rx.delay_s = 0.1
    ids = put(engine, [("case", c, seq) for seq in range(3) for c in range(1, 6)],
              time.time_ns())
    case1 = ids[0::5]
    rx.script[case1[0]] = [503] * 1000
    w = worker(engine, rx.url, concurrency=4)
    w.start()
    try:
        assert wait_for(lambda: len(rx.ids()) == 12)
        assert rx.attempts[case1[0]] >= 2
        assert rx.attempts[case1[1]] == rx.attempts[case1[2]] == 0
        assert rx.max_active == 4
        with rx._lock:
            rx.script[case1[0]] = []
        assert wait_for(lambda: len(rx.ids()) == 15)
    finally:
        w.stop(timeout=2)
        rx.close()
    assert seqs_by_key(rx) == {("case", c): [0, 1, 2] for c in range(1, 6)}
    assert [d for d, _ in rx.requests if d in case1[1:]] == case1[1:]  # each sent once


def test_a_dead_event_lets_its_case_go_on_and_a_resend_keeps_its_place(db_url: str) -> None:
    """A dead-lettered event stops blocking its case; resent, it goes before the later
    events of the case that are still pending."""
    engine = open_database(db_url)
    rx = FlakyReceiver()
    ids = put(engine, [("case", 1, seq) for seq in range(3)], time.time_ns())
    rx.script[ids[0]] = [503, 503, 400]  # retried, then refused for good
    w = worker(engine, rx.url)
    w.start()
    try:
        assert wait_for(lambda: len(rx.ids()) == 2)
    finally:
        w.stop(timeout=2)
    assert rows(engine)[ids[0]].status == "dead"
    assert [d for d, _ in rx.requests] == [ids[0]] * 3 + ids[1:]
    later = put(engine, [("case", 1, 3)], time.time_ns())
    resend(engine, rows(engine)[ids[0]].id, time.time_ns())
    w2 = worker(engine, rx.url)
    w2.start()
    try:
        assert wait_for(lambda: len(rx.ids()) == 4)
    finally:
        w2.stop(timeout=2)
        rx.close()
    assert rx.ids() == [*ids[1:], ids[0], *later]
    assert seqs_by_key(rx) == {("case", 1): [1, 2, 0, 3]}


def test_upgrade_gives_the_pending_rows_of_an_old_outbox_their_order(db_url: str) -> None:
    """Rows written before the order key existed are keyed by the migration."""
    engine = open_database(db_url)
    with engine.begin() as conn:  # back to the schema of version 1
        conn.exec_driver_sql("DROP INDEX ix_webhook_outbox_order")
        conn.exec_driver_sql("ALTER TABLE webhook_outbox DROP COLUMN order_key")
        conn.exec_driver_sql("UPDATE schema_versions SET version = 1 WHERE component = 'alerts'")
        for i, (case_id, payload) in enumerate([
                (7, {"case": {"id": 7}, "alert": None}),
                (None, {"alert": {"id": 9}, "case": None}),
                (None, {"other": True})]):
            conn.execute(sa.text(
                "INSERT INTO webhook_outbox (delivery_id, event_id, event, payload, status, "
                "attempts, created_ns, next_attempt_ns, last_error, delivered_via, case_id) "
                "VALUES (:d, :d, 'case.updated', :p, 'pending', 0, 1, 1, '', '', :c)"),
                {"d": f"old-{i}", "p": orjson.dumps(payload).decode(), "c": case_id})
    engine.dispose()
    engine = open_database(db_url)
    with engine.connect() as conn:
        keys = dict(conn.execute(sa.select(outbox.c.delivery_id, outbox.c.order_key)).all())
    assert keys == {"old-0": "case:7", "old-1": "alert:9", "old-2": ""}
    (new,) = put(engine, [("case", 7, 1)], time.time_ns())
    assert rows(engine)[new].order_key == "case:7"


def test_order_per_case_holds_across_the_switch_to_the_fallback(db_url: str) -> None:
    """The primary fails; the first event of each case waits (backing off) until the
    fallback takes over, and the later ones follow it there, in order."""
    engine = open_database(db_url)
    primary = FlakyReceiver(default=503)
    backup = FlakyReceiver()
    ids = put(engine, [("case", c, seq) for seq in range(3) for c in range(1, 5)],
              time.time_ns())
    cfg = DeliveryConfig(base_delay_s=0.02, max_delay_s=0.1, poll_interval_s=0.02,
                         fallback_after_ns=300_000_000)
    backup.requests = primary.requests  # one log of the requests to either endpoint
    w = OutboxWorker(engine, HttpNotifier(primary.url, SECRET, timeout=0.5),
                     fallback=HttpNotifier(backup.url, SECRET, timeout=0.5), config=cfg)
    w.start()
    try:
        assert wait_for(lambda: len(backup.ids()) == 12)
    finally:
        w.stop(timeout=2)
        primary.close()
        backup.close()
    assert seqs_by_key(backup) == {("case", c): [0, 1, 2] for c in range(1, 5)}
    seq_of = {d: (1 + i % 4, i // 4) for i, d in enumerate(ids)}
    tried: dict[int, list[int]] = {}
    for d, _ in primary.requests:
        tried.setdefault(seq_of[d][0], []).append(seq_of[d][1])
    # no event was tried on either endpoint before the one before it was through
    assert all(s == sorted(s) for s in tried.values()) and primary.attempts[ids[0]] >= 1
    assert {r.delivered_via for r in rows(engine).values()} == {"fallback"}


def test_after_an_outage_the_backlog_goes_out_at_once_not_after_its_backoff(
        db_url: str) -> None:
    """An hour down leaves every row backing off up to 5 minutes; the first delivery that
    gets through makes the rest due at once (a 429-ed row keeps its backoff)."""
    clock = SimClock(time.time_ns())
    engine = open_database(db_url)
    port = free_port()
    cfg = DeliveryConfig(poll_interval_s=0.01)
    w = OutboxWorker(engine, HttpNotifier(f"http://127.0.0.1:{port}/hook", SECRET, timeout=0.5),
                     config=cfg, clock=clock, seed=3)
    w.start()
    rx: FlakyReceiver | None = None
    try:
        ids = put(engine, [("case", c, 0) for c in range(1, 9)], clock())
        w.wake()
        for _ in range(360):  # one simulated hour, connection refused
            clock.advance(10)
            time.sleep(0.003)
        assert wait_for(lambda: min(r.attempts for r in rows(engine).values()) > 8)
        time.sleep(0.2)  # attempts under way end (connection refused is immediate)
        with engine.begin() as conn:  # every row 4 minutes into its backoff, one rate-limited
            conn.execute(outbox.update().values(next_attempt_ns=clock() + 240 * 10**9))
            conn.execute(outbox.update().where(outbox.c.delivery_id == ids[-1])
                         .values(last_status=429, next_attempt_ns=clock() + 200 * 10**9))
        assert {r.status for r in rows(engine).values()} == {"pending"}
        rx = FlakyReceiver(port=port)
        (fresh,) = put(engine, [("case", 99, 0)], clock())  # a new event goes out at once
        w.wake()
        assert wait_for(lambda: len(rx.ids()) == 8, 10), rx.ids()  # the clock stands still
        assert set(rx.ids()) == {*ids[:-1], fresh}
        assert rows(engine)[ids[-1]].status == "pending"
        clock.advance(200)
        w.wake()
        assert wait_for(lambda: len(rx.ids()) == 9, 10)
    finally:
        w.stop(timeout=2)
        if rx is not None:
            rx.close()
