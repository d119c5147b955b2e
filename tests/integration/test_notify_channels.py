"""Notification channels against local stand-ins of each platform (real HTTP servers that
verify the platform's signature; a real SMTP server) through the real outbox on SQLite:
payload shapes, signatures, error codes, rate limits, persistence across a restart."""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from alerts.delivery.model import DeliveryStatus
from alerts.delivery.outbox import DeliveryConfig, OutboxWorker
from alerts.delivery.store import enqueue, outbox
from alerts.delivery.webhook import HttpNotifier
from alerts.errors import DeliveryError
from alerts.notify.channels import (
    DingTalkChannel,
    EmailChannel,
    FeishuChannel,
    SmsChannel,
    WeComChannel,
)
from alerts.notify.model import Channel
from alerts.notify.ratelimit import DEFAULT_LIMITS, RateLimiter
from alerts.notify.render import Renderer
from alerts.notify.routing import NotifyRoute, Router
from alerts.notify.worker import NotifyWorker
from devices.model import Device
from devices.registry import MemoryRegistry
from lifeline.app import create_app
from lifeline.auth import new_token, token_digest
from lifeline.db import open_database
from lifeline.metrics import StateCollector
from lifeline.settings import load_settings
from tests.integration.notify_platforms import Platform, serve, stop
from tests.support import wait_for

pytestmark = pytest.mark.integration
S = 1_000_000_000
SECRET = "SEC-test-secret-0123456789"
DEVICE = Device("gas-7", "gas_alarm", grid="G3", district="滨江区", unit="燃气公司",
                name="滨江路 7 号阀井", lat=30.21, lon=120.21, address="滨江路 7 号",
                limits={"lel": {"high": 20.0, "high_high": 50.0}})


def payload(alert_id: int = 1, case_id: int | None = 11, severity: str = "critical",
            state: str = "firing") -> dict[str, Any]:
    alert = {"id": alert_id, "state": state, "rule": "gas-lel-high", "severity": severity,
             "device": "gas-7", "device_type": "gas_alarm", "grid": "G3", "district": "滨江区",
             "unit": "燃气公司", "metric": "lel", "value": 62.5,
             "fired": "2026-12-06T01:30:00Z", "first_seen": "2026-12-06T01:30:00Z",
             "resolved": None, "case_id": case_id}
    case = None if case_id is None else {
        "id": case_id, "state": "dispatched", "severity": severity, "title": "gas_alarm at gas-7",
        "grid": "G3", "district": "滨江区", "device_type": "gas_alarm", "device": "gas-7",
        "unit": "燃气公司", "created": "2026-12-06T01:30:00Z", "accepted": None,
        "deadlines": {"register": None, "dispatch": None, "handle": "2026-12-06T03:30:00Z",
                      "verify": None}}
    return {"alert": alert, "case": case}


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_database(f"sqlite:///{tmp_path / 'lifeline.db'}")


def renderer() -> Renderer:
    return Renderer(MemoryRegistry([DEVICE]), case_url="https://duty.example/cases/{id}",
                    ack_link=lambda kind, oid: f"https://duty.example/ack/{kind}/{oid}")


def route_all(*channels: str) -> Router:
    return Router([NotifyRoute(channels=channels, events=frozenset({"alert.firing",
                                                                    "alert.resolved"}))])


def put(engine: Engine, router: Router, n: int = 1, now: int | None = None) -> None:
    now = now or time.time_ns()
    with engine.begin() as conn:
        for i in range(n):
            p = payload(alert_id=i + 1, case_id=100 + i)
            enqueue(conn, "alert.firing", p, now, case_id=100 + i, fanout=router)


def rows(engine: Engine, target: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(outbox).where(outbox.c.target == target)
                                 .order_by(outbox.c.id)))


def worker(engine: Engine, channel: Channel, limits: tuple[tuple[int, float], ...] = (),
           batch: int = 10) -> NotifyWorker:
    return NotifyWorker(engine, renderer(), [(channel, RateLimiter(limits), batch)],
                        config=DeliveryConfig(base_delay_s=0.01, max_delay_s=0.05), seed=1)


@pytest.fixture
def platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    kind, keyword = request.param
    p = serve(Platform(kind, secret=SECRET, keyword=keyword))
    yield p
    stop(p)


# -- payload shape and signatures, one test per platform ---------------------------------
@pytest.mark.parametrize("platform", [("wecom", "")], indirect=True)
def test_wecom_markdown_message(engine: Engine, platform: Platform) -> None:
    put(engine, route_all("wecom"))
    w = worker(engine, WeComChannel("wecom", platform.url))
    assert w.run_once("wecom") == 1
    (got,) = platform.accepted
    doc = got.json()
    assert set(doc) == {"msgtype", "markdown"} and doc["msgtype"] == "markdown"
    content = doc["markdown"]["content"]
    for needed in ("紧急", "滨江路 7 号", "网格 G3", "lel = 62.5", "high_high 50",
                   "https://uri.amap.com/marker?position=120.21,30.21", "案件：#100",
                   "12-06 11:30", "https://duty.example/cases/100",
                   "https://duty.example/ack/case/100"):
        assert needed in content, (needed, content)
    (row,) = rows(engine, "wecom")
    assert row.status == DeliveryStatus.DELIVERED.value and row.attempts == 1
    (hook,) = rows(engine, "")  # the dispatch webhook's own row is untouched
    assert hook.status == DeliveryStatus.PENDING.value


@pytest.mark.parametrize("platform", [("dingtalk", "告警")], indirect=True)
def test_dingtalk_signed_markdown_with_keyword(engine: Engine, platform: Platform) -> None:
    put(engine, route_all("ding"))
    w = worker(engine, DingTalkChannel("ding", platform.url, SECRET, keyword="告警"))
    assert w.run_once("ding") == 1
    assert platform.refused == [] and len(platform.accepted) == 1
    got = platform.accepted[0]
    assert set(got.query) == {"access_token", "timestamp", "sign"}
    doc = got.json()
    assert doc["msgtype"] == "markdown" and "告警" in doc["markdown"]["text"]
    assert doc["markdown"]["title"].startswith("【紧急】")


@pytest.mark.parametrize("platform", [("dingtalk", "")], indirect=True)
def test_dingtalk_wrong_secret_is_permanent(engine: Engine, platform: Platform) -> None:
    put(engine, route_all("ding"))
    w = worker(engine, DingTalkChannel("ding", platform.url, "another-secret-xxxxxxxx"))
    w.run_once("ding")
    assert platform.refused == ["sign"]
    (row,) = rows(engine, "ding")
    assert row.status == DeliveryStatus.DEAD.value and "310000" in row.last_error


@pytest.mark.parametrize("platform", [("feishu", "")], indirect=True)
def test_feishu_signed_interactive_card(engine: Engine, platform: Platform) -> None:
    put(engine, route_all("fs"))
    w = worker(engine, FeishuChannel("fs", platform.url, SECRET))
    assert w.run_once("fs") == 1
    assert platform.refused == []
    doc = platform.accepted[0].json()
    assert doc["msg_type"] == "interactive" and isinstance(doc["timestamp"], str)
    card = doc["card"]
    assert card["header"]["template"] == "red"
    assert card["header"]["title"]["content"].startswith("【紧急】")
    assert card["elements"][0]["text"]["tag"] == "lark_md"
    buttons = card["elements"][1]["actions"]
    assert [b["url"] for b in buttons] == ["https://duty.example/ack/case/100",
                                           "https://duty.example/cases/100"]


@pytest.mark.parametrize("platform", [("sms", "")], indirect=True)
def test_sms_gateway_template(engine: Engine, platform: Platform) -> None:
    put(engine, route_all("sms"))
    body = '{"to": {{ phones | tojson }}, "content": {{ text | tojson }}}'
    ch = SmsChannel("sms", platform.url, headers={"Authorization": "Bearer {{ secret }}"},
                    body=body, phones=["13800000000"], secret=SECRET)
    assert worker(engine, ch).run_once("sms") == 1
    (got,) = platform.accepted
    assert got.headers["Authorization"] == f"Bearer {SECRET}"
    doc = got.json()
    assert doc["to"] == ["13800000000"]
    assert doc["content"].startswith("【城市生命线】告警：") and "案件#100" in doc["content"]


# -- error codes, retries, rate limits ---------------------------------------------------
@pytest.mark.parametrize("platform", [("dingtalk", "")], indirect=True)
def test_dingtalk_too_fast_is_retried_after_the_block(engine: Engine,
                                                      platform: Platform) -> None:
    platform.script.append((200, {"errcode": 130101,
                                  "errmsg": "send too fast, exceed 20 times per minute"}))
    put(engine, route_all("ding"))
    w = worker(engine, DingTalkChannel("ding", platform.url, SECRET))
    w.run_once("ding")
    (row,) = rows(engine, "ding")
    assert row.status == "pending" and row.attempts == 1 and "130101" in row.last_error
    assert row.next_attempt_ns - time.time_ns() > 50 * S  # waits out the platform's block
    assert w.runners["ding"].limiter.available(time.time()) == 0
    # the block passes: the same row goes out
    w.runners["ding"].limiter = RateLimiter(DEFAULT_LIMITS["dingtalk"])
    with engine.begin() as conn:
        conn.execute(outbox.update().values(next_attempt_ns=0))
    assert w.run_once("ding") == 1
    (row,) = rows(engine, "ding")
    assert row.status == "delivered" and row.attempts == 2


@pytest.mark.parametrize("platform", [("wecom", "")], indirect=True)
def test_wecom_rate_code_and_http_errors(engine: Engine, platform: Platform) -> None:
    platform.script.extend([(200, {"errcode": 45009, "errmsg": "api freq out of limit"}),
                            (502, {})])
    put(engine, route_all("wecom"))
    w = worker(engine, WeComChannel("wecom", platform.url))
    w.run_once("wecom")
    (row,) = rows(engine, "wecom")
    assert row.status == "pending" and "45009" in row.last_error
    w.runners["wecom"].limiter = RateLimiter(())
    with engine.begin() as conn:
        conn.execute(outbox.update().values(next_attempt_ns=0))
    w.run_once("wecom")
    (row,) = rows(engine, "wecom")
    assert row.status == "pending" and row.last_status == 502 and row.attempts == 2
    with engine.begin() as conn:
        conn.execute(outbox.update().values(next_attempt_ns=0))
    w.run_once("wecom")
    assert rows(engine, "wecom")[0].status == "delivered"


@pytest.mark.parametrize("platform", [("feishu", "")], indirect=True)
def test_feishu_frequency_codes_retry_sign_failure_does_not(engine: Engine,
                                                            platform: Platform) -> None:
    platform.script.append((200, {"code": 11232, "msg": "frequency limited", "data": {}}))
    put(engine, route_all("fs"))
    w = worker(engine, FeishuChannel("fs", platform.url, SECRET))
    w.run_once("fs")
    assert rows(engine, "fs")[0].status == "pending"
    bad = worker(engine, FeishuChannel("fs", platform.url, "wrong-secret-xxxxxxxxxx"))
    with engine.begin() as conn:
        conn.execute(outbox.update().values(next_attempt_ns=0))
    bad.run_once("fs")
    (row,) = rows(engine, "fs")
    assert row.status == "dead" and "19021" in row.last_error


@pytest.mark.parametrize("platform", [("wecom", "")], indirect=True)
def test_over_the_rate_limit_events_are_merged(engine: Engine, platform: Platform) -> None:
    put(engine, route_all("wecom"), n=6)
    w = worker(engine, WeComChannel("wecom", platform.url), limits=((2, 60.0),))
    assert w.run_once("wecom") == 6  # 6 ready, 2 allowed: one merged message
    (got,) = platform.accepted
    content = got.json()["markdown"]["content"]
    assert all(f"案件：#{100 + i}" in content for i in range(6))
    assert {r.status for r in rows(engine, "wecom")} == {"delivered"}
    put(engine, route_all("wecom"), n=1)
    assert w.run_once("wecom") == 1  # one send left in the window
    put(engine, route_all("wecom"), n=1)
    assert w.run_once("wecom") == -1  # none left: waits, no attempt counted
    assert rows(engine, "wecom")[-1].attempts == 0 and len(platform.accepted) == 2


def test_nothing_is_lost_across_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lifeline.db'}"
    engine = open_database(url)
    port = free_port()  # nobody listens there: the platform is down
    put(engine, route_all("wecom"), n=2)
    down = worker(engine, WeComChannel("wecom",
                                       f"http://127.0.0.1:{port}/cgi-bin/webhook/send?key=x"))
    down.run_once("wecom")
    assert [r.status for r in rows(engine, "wecom")] == ["pending", "pending"]
    engine.dispose()
    platform = serve(Platform("wecom"))
    try:
        again = open_database(url)  # the service restarted
        w = worker(again, WeComChannel("wecom", platform.url))
        with again.begin() as conn:
            conn.execute(outbox.update().values(next_attempt_ns=0))
        assert w.run_once("wecom") == 2
        assert [r.status for r in rows(again, "wecom")] == ["delivered", "delivered"]
        assert len(platform.accepted) == 2
    finally:
        stop(platform)


# -- e-mail ---------------------------------------------------------------------------
class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_email_html_and_text(engine: Engine) -> None:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        put(engine, route_all("mail"))
        ch = EmailChannel("mail", "127.0.0.1", port, "lifeline@example.org",
                          ["duty@example.org"], security="none")
        w = NotifyWorker(engine, Renderer(MemoryRegistry([DEVICE])),
                         [(ch, RateLimiter(()), 10)])
        assert w.run_once("mail") == 1
    finally:
        controller.stop()
    ((sender, rcpt, raw),) = inbox.messages
    assert sender == "lifeline@example.org" and rcpt == ["duty@example.org"]
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(mail["Subject"]).startswith("【紧急】")
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "滨江路 7 号" in text and "lel = 62.5" in text
    assert "<table" in html and "https://uri.amap.com/marker?position=120.21,30.21" in html


def test_email_escapes_html(engine: Engine) -> None:
    r = Renderer(MemoryRegistry([Device("gas-7", "gas_alarm", address="<script>x</script>")]))
    msg = r.render([("alert.firing", payload())])
    assert "<script>" not in msg.html and "&lt;script&gt;" in msg.html
    assert "<script>x</script>" in msg.text  # plain text is not escaped


def test_email_refused_login_is_permanent(engine: Engine) -> None:
    class NoAuth(Inbox):
        pass

    port = free_port()
    controller = Controller(NoAuth(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        put(engine, route_all("mail"))
        ch = EmailChannel("mail", "127.0.0.1", port, "l@example.org", ["d@example.org"],
                          security="none", username="u", password="p")
        NotifyWorker(engine, Renderer(), [(ch, RateLimiter(()), 10)]).run_once("mail")
    finally:
        controller.stop()
    (row,) = rows(engine, "mail")
    assert row.status == "dead", row.last_error


def test_channel_rows_keep_the_event_and_route(engine: Engine) -> None:
    put(engine, route_all("a", "b"))
    got = {r.target: r for r in rows(engine, "a") + rows(engine, "b")}
    (hook,) = rows(engine, "")
    assert set(got) == {"a", "b"}
    assert {r.event_id for r in got.values()} == {hook.event_id}
    assert orjson.loads(got["a"].payload)["notify"]["route"] == 0


def test_email_over_starttls(engine: Engine, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=server_tls,
                            require_starttls=True)
    controller.start()
    try:
        put(engine, route_all("mail"))
        client_tls = ssl.create_default_context(cafile=str(cert))
        ch = EmailChannel("mail", "127.0.0.1", port, "l@example.org", ["d@example.org"],
                          security="starttls", tls_context=client_tls)
        plain = EmailChannel("plain", "127.0.0.1", port, "l@example.org", ["d@example.org"],
                             security="none")
        NotifyWorker(engine, Renderer(), [(ch, RateLimiter(()), 10)]).run_once("mail")
        with pytest.raises(DeliveryError) as refused:  # the server insists on STARTTLS
            plain.send(Renderer().render([("alert.firing", payload())]))
    finally:
        controller.stop()
    assert rows(engine, "mail")[0].status == "delivered" and len(inbox.messages) == 1
    assert not refused.value.retryable


def test_the_webhook_worker_sends_only_its_own_rows(engine: Engine) -> None:
    receiver = serve(Platform("sms"))  # accepts any POST
    try:
        put(engine, route_all("wecom", "ding"), n=2)
        hook = OutboxWorker(engine, HttpNotifier(receiver.url, SECRET),
                            config=DeliveryConfig(concurrency=1))
        try:
            assert hook.ready() == 2
            hook.start()
            assert wait_for(lambda: hook.stats.delivered == 2, timeout=10)
        finally:
            hook.stop(2)
        assert len(receiver.accepted) == 2
        assert {orjson.loads(r.body)["event"] for r in receiver.accepted} == {"alert.firing"}
        assert [r.status for r in rows(engine, "wecom") + rows(engine, "ding")] == [
            "pending"] * 4
    finally:
        stop(receiver)


def test_webhook_gauges_count_only_webhook_rows_channels_have_their_own(
        engine: Engine) -> None:
    now = time.time_ns()
    put(engine, route_all("wecom"), n=2, now=now - 3600 * S)  # channel rows an hour old
    with engine.begin() as conn:  # the webhook's rows were delivered; one channel row died
        conn.execute(outbox.update().where(outbox.c.target == "").values(status="delivered"))
        first = conn.execute(sa.select(sa.func.min(outbox.c.id)).where(
            outbox.c.target == "wecom")).scalar_one()
        conn.execute(outbox.update().where(outbox.c.id == first).values(status="dead"))
    fam = {m.name: m for m in StateCollector(engine, clock=lambda: now).collect()}
    assert fam["lifeline_webhook_outbox_pending"].samples[0].value == 0
    assert fam["lifeline_webhook_outbox_dead"].samples[0].value == 0
    assert fam["lifeline_webhook_outbox_oldest_pending_age_seconds"].samples[0].value == 0
    got = {s.labels["channel"]: s.value for s in fam["lifeline_notify_outbox_pending"].samples}
    assert got == {"wecom": 1}
    dead = {s.labels["channel"]: s.value for s in fam["lifeline_notify_outbox_dead"].samples}
    assert dead == {"wecom": 1}


@pytest.mark.parametrize("platform", [("dingtalk", "")], indirect=True)
def test_dead_channel_messages_are_listed_and_resent_through_the_api(
        tmp_path: Path, engine: Engine, platform: Platform) -> None:
    put(engine, route_all("ding", "wecom"))
    worker(engine, DingTalkChannel("ding", platform.url, "wrong-secret-0123456789")
           ).run_once("ding")
    admin = new_token()
    settings = load_settings(None, run_dir=tmp_path, api={"tokens": [
        {"name": "a", "role": "admin", "sha256": token_digest(admin)}]})
    client = TestClient(create_app(settings, engine, {}))
    auth = {"Authorization": f"Bearer {admin}"}
    dead = client.get("/api/v1/deliveries", params={"status": "dead"}, headers=auth).json()
    assert [(d["target"], d["event"]) for d in dead["data"]] == [("ding", "alert.firing")]
    listed = client.get("/api/v1/deliveries", params={"target": "wecom"}, headers=auth).json()
    assert [d["target"] for d in listed["data"]] == ["wecom"]
    webhook = client.get("/api/v1/deliveries", params={"target": ""}, headers=auth).json()
    assert [d["target"] for d in webhook["data"]] == [""]
    resent = client.post(f"/api/v1/deliveries/{dead['data'][0]['id']}/resend", headers=auth)
    assert resent.status_code == 200 and resent.json()["status"] == "pending"
    assert worker(engine, DingTalkChannel("ding", platform.url, SECRET)).run_once("ding") == 1
    assert rows(engine, "ding")[0].status == "delivered"
