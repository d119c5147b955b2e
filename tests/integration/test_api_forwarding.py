"""Write forwarding between two real API servers (uvicorn, the PostgreSQL at
127.0.0.1:5432): a standby passes writes on to the leader verbatim and hands its answer
back byte for byte; signed callbacks verify on the leader; no leader, a leader down, slow
or breaking the connection are told apart; hostile requests are never forwarded."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alerts.lifecycle.model import AlertConfig
from alerts.lifecycle.pipeline import AlertPipeline
from devices.model import Device
from devices.registry import MemoryRegistry
from lifeline.alerting import case_config
from lifeline.app import ApiServer, create_app
from lifeline.auth import new_token, token_digest
from lifeline.db import open_database
from lifeline.leadership import NS, LeaderElector, LeaderLease, lease_engine
from lifeline.settings import Settings, load_settings
from rules.model import Finding, FindingState, Severity
from simulators.dispatch import sign_callback

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)]

SECRET = "forwarding-secret-0123456789"
BODY_LIMIT = 4096
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade"}


class ElectorView:
    """What the API needs to know about leadership (:class:`lifeline.api.deps.HaView`),
    answered by an elector: the role from its local reckoning, the leader's URL from the
    database."""

    def __init__(self, elector: LeaderElector) -> None:
        self.elector = elector

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self.elector.lease.node_id

    def is_leader(self) -> bool:
        """Whether this node leads now."""
        return self.elector.is_leader

    def leader_api_url(self) -> str | None:
        """The leader's advertised API URL (None: no leader, or it advertised none)."""
        return self.elector.lease.leader_api_url()


@dataclass
class StaticHa:
    """A test :class:`~lifeline.api.deps.HaView`: the role and the leader URL as set."""

    node: str
    leader: bool
    url: str | None = None
    lookups: int = 0

    @property
    def node_id(self) -> str:
        return self.node

    def is_leader(self) -> bool:
        return self.leader

    def leader_api_url(self) -> str | None:
        self.lookups += 1
        return self.url


@dataclass
class Seen:
    """One exchange as the leader's outermost ASGI layer saw it."""

    method: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    status: int = 0
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    response_body: bytes = b""

    def header(self, name: str) -> list[bytes]:
        return [v for k, v in self.headers if k.decode().lower() == name]


class Recorder:
    """Outermost middleware of the leader: records requests and responses byte for byte
    and adds response headers of its own (hop-by-hop ones too)."""

    def __init__(self, app: ASGIApp, seen: list[Seen]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rec = Seen(scope["method"], scope.get("raw_path") or b"", scope["query_string"],
                   list(scope["headers"]))
        self.seen.append(rec)

        async def recv() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                rec.body += message.get("body", b"")
            return message

        async def snd(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [
                    *message.get("headers", []), (b"x-leader-extra", b"yes"),
                    (b"keep-alive", b"timeout=7"), (b"proxy-authenticate", b"Basic")]}
                rec.status = message["status"]
                rec.response_headers = list(message["headers"])
            elif message["type"] == "http.response.body":
                rec.response_body += message.get("body", b"")
            await send(message)

        await self.app(scope, recv, snd)


def serve(app: Any) -> tuple[ApiServer, str]:
    server = ApiServer(app, "127.0.0.1", 0)
    server.start()
    deadline = time.monotonic() + 10
    while server.port is None:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{server.port}"


TOKENS = {role: new_token() for role in ("viewer", "operator", "admin")}


def auth(role: str = "operator") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def make_settings(tmp_path: Path) -> Settings:
    return load_settings(None, run_dir=tmp_path, api={
        "max_body_bytes": BODY_LIMIT,
        "tokens": [{"name": f"{r}-user", "role": r, "sha256": token_digest(t)}
                   for r, t in TOKENS.items()]},
        webhook={"url": "http://127.0.0.1:9/x", "secret": SECRET})


class Cluster:
    """A leader and a standby API on one database; the leader's traffic recorded."""

    def __init__(self, db_url: str, tmp_path: Path, forward_timeout_s: float = 5.0) -> None:
        self.tokens = TOKENS
        self.settings = make_settings(tmp_path)
        self.engines: list[Engine] = []
        self.seen: list[Seen] = []
        self.leader_ha = StaticHa("node-a", leader=True)
        leader_app = create_app(self.settings, self._engine(db_url), ha=self.leader_ha)
        leader_app.add_middleware(Recorder, seen=self.seen)
        self.leader, self.leader_url = serve(leader_app)
        self.leader_ha.url = self.leader_url
        self.ha = StaticHa("node-b", leader=False, url=self.leader_url)
        self.standby, self.url = serve(create_app(
            self.settings, self._engine(db_url), ha=self.ha,
            forward_timeout_s=forward_timeout_s))
        self.http = httpx.Client(timeout=20)

    def _engine(self, db_url: str) -> Engine:
        engine = open_database(db_url)
        self.engines.append(engine)
        return engine

    def auth(self, role: str = "operator") -> dict[str, str]:
        return auth(role)

    def open_cases(self) -> dict[str, int]:
        """Two firing alerts with a case each (written as the service would)."""
        pipeline = AlertPipeline(
            self.engines[0], MemoryRegistry([Device("gas-1", "gas_alarm", grid="G1"),
                                             Device("gas-2", "gas_alarm", grid="G2")]),
            AlertConfig(resolve_delay_ns=0), case_config(self.settings))
        now = time.time_ns()
        pipeline.process([Finding("lel", d, "lel", FindingState.FIRING, Severity.CRITICAL,
                                  now, 60.0) for d in ("gas-1", "gas-2")])
        data = self.http.get(f"{self.url}/api/v1/alerts", headers=self.auth("viewer")).json()
        return {a["device"]: a["case_id"] for a in data["data"]}

    def close(self) -> None:
        self.http.close()
        self.standby.stop()
        self.leader.stop()
        for engine in self.engines:
            engine.dispose()


@pytest.fixture
def cluster(db_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(db_url, tmp_path)
    yield c
    c.close()


def silence(comment: str) -> bytes:
    return orjson.dumps({"matchers": {"device": "gas-1"}, "ends_at": "2030-01-01T00:00:00Z",
                         "comment": comment})


def _names(headers: Any) -> set[str]:
    return {k.decode().lower() if isinstance(k, bytes) else k.lower() for k, _ in headers}


# --------------------------------------------------------------------------- forwarding


def test_a_write_to_the_standby_reaches_the_leader_verbatim(cluster: Cluster) -> None:
    """The leader receives the standby's request as sent (path, query, body, headers but
    the hop-by-hop ones and Host) and the client gets the leader's answer byte for byte,
    with the leader named; reads stay on the standby."""
    body = silence("forwarded via the standby")
    headers = {**cluster.auth(), "Content-Type": "application/json",
               "X-Custom": "kept", "Keep-Alive": "timeout=5", "TE": "trailers",
               "Proxy-Authorization": "Basic c2VjcmV0OnNlY3JldA==",
               "Connection": "keep-alive, X-Named-Hop", "X-Named-Hop": "dropped",
               "Host": "evil.example:80"}
    resp = cluster.http.post(f"{cluster.url}/api/v1/silences", content=body, headers=headers)
    assert resp.status_code == 201, resp.text
    assert len(cluster.seen) == 1
    got = cluster.seen[0]
    # what the leader received
    assert (got.method, got.raw_path, got.query, got.body) == (
        "POST", b"/api/v1/silences", b"", body)
    assert got.header("x-lifeline-forwarded-by") == [b"node-b"]
    assert got.header("authorization") == [headers["Authorization"].encode()]
    assert got.header("x-custom") == [b"kept"]
    assert got.header("host") == [cluster.leader_url.removeprefix("http://").encode()]
    assert got.header("content-length") == [str(len(body)).encode()]
    assert not _names(got.headers) & (HOP_BY_HOP | {"x-named-hop"})
    # what the client received: the leader's answer
    assert resp.content == got.response_body
    assert resp.status_code == got.status
    assert resp.headers["x-lifeline-leader"] == cluster.leader_url
    assert resp.headers["x-leader-extra"] == "yes"
    assert resp.headers["content-type"] == "application/json"
    assert "proxy-authenticate" not in resp.headers and "keep-alive" not in resp.headers
    for name in ("date", "server", "content-length", "x-lifeline-leader"):  # one each
        assert len(resp.headers.get_list(name)) == 1, (name, resp.headers.multi_items())
    created = resp.json()
    # a read is answered by the standby itself (the shared database)
    listed = cluster.http.get(f"{cluster.url}/api/v1/silences", headers=cluster.auth())
    assert listed.status_code == 200
    assert created["id"] in [s["id"] for s in listed.json()["data"]]
    assert len(cluster.seen) == 1 and "x-lifeline-leader" not in listed.headers


def test_query_string_and_refusals_come_back_unchanged(cluster: Cluster) -> None:
    """The raw query string goes through as sent; the leader's refusal (422 naming the
    parameter) and its 401 reach the client as the leader wrote them."""
    body = silence("with a query")
    resp = cluster.http.post(f"{cluster.url}/api/v1/silences?who=%20a%2Fb&who=2",
                             content=body, headers={**cluster.auth(),
                                                    "Content-Type": "application/json"})
    got = cluster.seen[-1]
    assert got.query == b"who=%20a%2Fb&who=2"
    assert resp.status_code == got.status == 422
    assert resp.content == got.response_body and b"who" in resp.content
    anonymous = cluster.http.post(f"{cluster.url}/api/v1/silences", content=body,
                                  headers={"Content-Type": "application/json"})
    got = cluster.seen[-1]
    assert anonymous.status_code == got.status == 401
    assert anonymous.content == got.response_body
    assert anonymous.headers["www-authenticate"] == "Bearer"
    # DELETE and PATCH are writes too
    patch = cluster.http.patch(f"{cluster.url}/api/v1/devices/nope", content=b"{}",
                               headers={**cluster.auth("admin"),
                                        "Content-Type": "application/json"})
    assert cluster.seen[-1].method == "PATCH" and patch.status_code == cluster.seen[-1].status
    delete = cluster.http.delete(f"{cluster.url}/api/v1/devices/nope",
                                 headers=cluster.auth("admin"))
    assert cluster.seen[-1].method == "DELETE"
    assert delete.content == cluster.seen[-1].response_body
    assert len(cluster.seen) == 4
    # a created device, deleted via the standby: 204 without a body
    admin = {**cluster.auth("admin"), "Content-Type": "application/json"}
    made = cluster.http.post(f"{cluster.url}/api/v1/devices", headers=admin,
                             content=orjson.dumps({"id": "gas-9", "type": "gas_alarm"}))
    assert made.status_code == 201, made.text
    gone = cluster.http.delete(f"{cluster.url}/api/v1/devices/gas-9", headers=admin)
    assert (gone.status_code, gone.content) == (204, b"") == (cluster.seen[-1].status,
                                                             cluster.seen[-1].response_body)
    assert "content-length" not in _names(cluster.seen[-1].response_headers)
    listed = cluster.http.get(f"{cluster.url}/api/v1/devices", headers=admin).json()
    assert "gas-9" not in [d["id"] for d in listed["data"]]


def _signed(case_id: int, body: bytes, key: str = "") -> dict[str, str]:
    ts = str(int(time.time()))
    path = f"/api/v1/cases/{case_id}/actions"
    headers = {"Content-Type": "application/json", "X-Lifeline-Timestamp": ts,
               "X-Lifeline-Signature": sign_callback(SECRET, path, key, ts, body)}
    if key:
        headers["Idempotency-Key"] = key
    return headers


def test_signed_callback_via_the_standby_verifies_on_the_leader(cluster: Cluster) -> None:
    """The signature binds method, path, key, timestamp and body, not the host: a
    callback sent to the standby is accepted by the leader, once; its replay, via either
    node, is refused; with a key, the stored first answer comes back."""
    gas = cluster.open_cases()["gas-1"]
    path = f"/api/v1/cases/{gas}/actions"
    raw = orjson.dumps({"action": "comment", "note": "via the standby"})
    headers = _signed(gas, raw)
    first = cluster.http.post(f"{cluster.url}{path}", content=raw, headers=headers)
    assert first.status_code == 200, first.text
    assert cluster.seen[-1].header("x-lifeline-signature") == [
        headers["X-Lifeline-Signature"].encode()]
    again = cluster.http.post(f"{cluster.url}{path}", content=raw, headers=headers)
    assert again.status_code == 409 and "replay" in again.json()["detail"]
    direct = cluster.http.post(f"{cluster.leader_url}{path}", content=raw, headers=headers)
    assert direct.status_code == 409
    history = cluster.http.get(f"{cluster.url}/api/v1/cases/{gas}",
                               headers=cluster.auth("viewer")).json()["history"]
    assert [h["note"] for h in history].count("via the standby") == 1
    # keyed: the first answer again, marked as a replay, one effect
    accept = orjson.dumps({"action": "accept", "external_id": "CG-7"})
    keyed = _signed(gas, accept, key="acc-standby")
    one = cluster.http.post(f"{cluster.url}{path}", content=accept, headers=keyed)
    two = cluster.http.post(f"{cluster.url}{path}", content=accept, headers=keyed)
    assert one.status_code == two.status_code == 200
    assert two.headers["idempotent-replayed"] == "true" and two.content == one.content
    # a forged signature is refused by the leader, not by the standby
    forged = {**headers, "X-Lifeline-Signature": "v2=" + "0" * 64}
    bad = cluster.http.post(f"{cluster.url}{path}", content=raw, headers=forged)
    assert bad.status_code == 401 and cluster.seen[-1].status == 401


# --------------------------------------------------------------------------- failures


def test_no_leader_is_503_with_retry_after_and_reads_still_work(cluster: Cluster) -> None:
    cluster.ha.url = None
    before = len(cluster.seen)
    resp = cluster.http.post(f"{cluster.url}/api/v1/silences", content=silence("x"),
                             headers={**cluster.auth(), "Content-Type": "application/json"})
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["detail"].startswith("no leader: ")
    read = cluster.http.get(f"{cluster.url}/api/v1/silences", headers=cluster.auth())
    assert read.status_code == 200
    assert len(cluster.seen) == before


def test_leader_down_is_503(cluster: Cluster) -> None:
    """The leader recorded a URL nobody listens on (it died): 503, nothing was sent."""
    with socket.socket() as sock:  # a port that was free a moment ago and stays closed
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cluster.ha.url = dead
    resp = cluster.http.post(f"{cluster.url}/api/v1/silences", content=silence("x"),
                             headers={**cluster.auth(), "Content-Type": "application/json"})
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    assert "unreachable" in resp.json()["detail"]
    assert resp.headers["x-lifeline-leader"] == dead
    # the real leader stopped: the same
    cluster.ha.url = cluster.leader_url
    cluster.leader.stop()
    resp = cluster.http.post(f"{cluster.url}/api/v1/silences", content=silence("x"),
                             headers={**cluster.auth(), "Content-Type": "application/json"})
    assert resp.status_code == 503 and "unreachable" in resp.json()["detail"]


class SilentServer:
    """A TCP server that reads requests and then does ``behaviour``: ``hang`` (never
    answers) or ``drop`` (closes the connection)."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.received = b""
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in self.received:
                        self.received += conn.recv(65536)
                if self.behaviour == "drop":
                    conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize(("behaviour", "status"), [("hang", 504), ("drop", 502)])
def test_leader_failing_after_the_request_was_sent(db_url: str, tmp_path: Path,
                                                   behaviour: str, status: int) -> None:
    """Sent, then no answer in time (504) or the connection broke (502): the detail says
    the write may have happened and that the Idempotency-Key makes a retry safe."""
    c = Cluster(db_url, tmp_path, forward_timeout_s=0.5)
    server = SilentServer(behaviour)
    try:
        c.ha.url = server.url
        resp = c.http.post(f"{c.url}/api/v1/silences", content=silence("slow"),
                           headers={**c.auth(), "Content-Type": "application/json",
                                    "Idempotency-Key": "k-1"})
        assert resp.status_code == status, resp.text
        detail = resp.json()["detail"]
        assert "may have happened" in detail and "Idempotency-Key" in detail
        assert b"POST /api/v1/silences HTTP/1.1" in server.received
        assert b"x-lifeline-forwarded-by: node-b" in server.received.lower()
    finally:
        server.close()
        c.close()


# --------------------------------------------------------------------------- hostile input


def test_an_already_forwarded_request_at_a_standby_is_refused(cluster: Cluster) -> None:
    """Forwards never chain (two nodes that both think the other leads would bounce a
    request forever): a standby refuses a request that carries the header; the leader
    serves it."""
    headers = {**cluster.auth(), "Content-Type": "application/json",
               "X-Lifeline-Forwarded-By": "node-c"}
    resp = cluster.http.post(f"{cluster.url}/api/v1/silences", content=silence("chain"),
                             headers=headers)
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    assert "forwarded already" in resp.json()["detail"]
    assert cluster.seen == [] and cluster.ha.lookups == 0
    leader = cluster.http.post(f"{cluster.leader_url}/api/v1/silences",
                               content=silence("chain"), headers=headers)
    assert leader.status_code == 201


def test_only_api_writes_are_forwarded(cluster: Cluster) -> None:
    """Paths outside /api/ and reads are answered locally: the standby is no proxy."""
    auth = cluster.auth("admin")
    for path in ("/metrics", "/healthz", "/readyz", "/docs", "/api", "/apix/v1/silences",
                 "/API/v1/silences", "/x/api/v1/silences"):
        resp = cluster.http.post(f"{cluster.url}{path}", content=b"{}", headers=auth)
        assert resp.status_code in (404, 405), (path, resp.status_code)
        assert "x-lifeline-leader" not in resp.headers
    for method in ("GET", "HEAD", "OPTIONS"):
        resp = cluster.http.request(method, f"{cluster.url}/api/v1/silences", headers=auth)
        assert "x-lifeline-leader" not in resp.headers, method
    assert cluster.seen == [] and cluster.ha.lookups == 0


def _raw_http(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_dot_segments_are_not_forwarded(cluster: Cluster) -> None:
    """``/api/../metrics`` would reach the leader as ``/metrics`` (clients normalise the
    path): refused with 400 instead, whatever the encoding. A request target naming
    another host is no /api/ path: answered locally, sent nowhere."""
    token = cluster.tokens["admin"]
    for path in (b"/api/../metrics", b"/api/v1/devices/..", b"/api/v1/%2e%2e/%2E%2E/metrics",
                 b"/api/v1/./silences"):
        answer = _raw_http(cluster.url, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
                           b"Authorization: Bearer " + token.encode() + b"\r\n"
                           b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        assert answer.startswith(b"HTTP/1.1 400 "), (path, answer[:200])
        assert b"not forwarded" in answer
    assert cluster.seen == []
    # an absolute-form target naming another host: not an /api/ path, answered here
    answer = _raw_http(cluster.url, b"POST http://127.0.0.2:9/api/v1/silences HTTP/1.1\r\n"
                       b"Host: 127.0.0.2:9\r\nAuthorization: Bearer " + token.encode()
                       + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:300]
    assert cluster.seen == [] and b"x-lifeline-leader" not in answer.lower()


def test_an_oversized_body_is_refused_before_forwarding(cluster: Cluster) -> None:
    """The body limit holds on a standby: a declared length over it and a chunked body
    passing it are refused with 413, and nothing reaches the leader."""
    headers = {**cluster.auth(), "Content-Type": "application/json"}
    big = silence("x" * BODY_LIMIT)
    declared = cluster.http.post(f"{cluster.url}/api/v1/silences", content=big,
                                 headers=headers)
    assert declared.status_code == 413 and "api.max_body_bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    chunked = cluster.http.post(f"{cluster.url}/api/v1/silences", content=chunks(),
                                headers=headers)
    assert chunked.status_code == 413 and "api.max_body_bytes" in chunked.json()["detail"]
    assert cluster.seen == []
    # at the limit it goes through (the leader validates it)
    at = silence("x" * (BODY_LIMIT - len(silence(""))))
    assert len(at) == BODY_LIMIT
    resp = cluster.http.post(f"{cluster.url}/api/v1/silences", content=at, headers=headers)
    assert resp.status_code == 422 and cluster.seen[-1].body == at  # comment too long


# --------------------------------------------------------------------------- real electors


def _wait(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_forwarding_follows_the_elected_leader(db_url: str, tmp_path: Path) -> None:
    """Two nodes with real electors advertising their API URLs: a write to the standby
    lands on the leader; after the leader steps down and the other node is elected, the
    old leader forwards to the new one; /readyz names each node's role."""
    settings = make_settings(tmp_path)
    nodes: dict[str, tuple[LeaderElector, ApiServer, str]] = {}
    engines = []
    try:
        for name in ("a", "b"):
            engine = open_database(db_url)
            engines.append(engine)
            lease = LeaderLease(lease_engine(db_url, 0.5), "fwd", name, int(1.5 * NS))
            elector = LeaderElector(lease, renew_s=0.25, poll_s=0.1)
            server, url = serve(create_app(settings, engine, ha=ElectorView(elector)))
            elector.api_url = url
            nodes[name] = (elector, server, elector.api_url)
        nodes["a"][0].start()
        _wait(lambda: nodes["a"][0].is_leader, 5)
        nodes["b"][0].start()
        http = httpx.Client(timeout=10)
        headers = {**auth(), "Content-Type": "application/json"}
        _wait(lambda: nodes["a"][0].lease.leader_api_url() == nodes["a"][2], 5)
        ready = {n: http.get(f"{url}/readyz").json() for n, (_, _, url) in nodes.items()}
        assert {n: (r["role"], r["node"]) for n, r in ready.items()} == {
            "a": ("leader", "a"), "b": ("standby", "b")}
        resp = http.post(f"{nodes['b'][2]}/api/v1/silences", content=silence("to a"),
                         headers=headers)
        assert resp.status_code == 201 and resp.headers["x-lifeline-leader"] == nodes["a"][2]
        local = http.post(f"{nodes['a'][2]}/api/v1/silences", content=silence("on a"),
                          headers=headers)
        assert local.status_code == 201 and "x-lifeline-leader" not in local.headers
        nodes["a"][0].stop()  # clean: releases, b is elected at its next poll
        _wait(lambda: nodes["b"][0].is_leader, 5)
        _wait(lambda: nodes["b"][0].lease.leader_api_url() == nodes["b"][2], 5)
        resp = http.post(f"{nodes['a'][2]}/api/v1/silences", content=silence("to b"),
                         headers=headers)
        assert resp.status_code == 201 and resp.headers["x-lifeline-leader"] == nodes["b"][2]
        assert http.get(f"{nodes['a'][2]}/readyz").json()["role"] == "standby"
        http.close()
    finally:
        for elector, server, _ in nodes.values():
            elector.stop()
            server.stop()
        for engine in engines:
            engine.dispose()
