"""Local stand-ins for the notification platforms: real HTTP servers that check each
platform's request shape and signature with the platform's own algorithm (written here
independently of alerts.notify) and answer like the platform (scripted error codes)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import orjson


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Platform:
    """One fake platform: ``kind`` selects the checks; ``script`` holds answers to give
    before the normal success answer (JSON bodies or (status, body))."""

    kind: str
    secret: str = ""
    keyword: str = ""
    received: list[Received] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    script: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.server_address[1]
        base = f"http://127.0.0.1:{port}"
        return {"wecom": f"{base}/cgi-bin/webhook/send?key=wk-123",
                "dingtalk": f"{base}/robot/send?access_token=dt-123",
                "feishu": f"{base}/open-apis/bot/v2/hook/fs-123",
                "sms": f"{base}/sms/send"}[self.kind]

    # -- the platform's checks -----------------------------------------------------------
    def check(self, r: Received) -> tuple[int, dict[str, Any]]:
        ok = {"feishu": {"code": 0, "msg": "success", "data": {}}}.get(
            self.kind, {"errcode": 0, "errmsg": "ok"})
        if self.kind == "wecom":
            if r.path != "/cgi-bin/webhook/send" or r.query.get("key") != "wk-123":
                return 200, {"errcode": 93000, "errmsg": "invalid webhook url"}
            doc = r.json()
            if doc.get("msgtype") != "markdown" or not doc["markdown"].get("content"):
                return 200, {"errcode": 40008, "errmsg": "invalid message type"}
        elif self.kind == "dingtalk":
            if r.query.get("access_token") != "dt-123":
                return 200, {"errcode": 300001, "errmsg": "token is not exist"}
            ts = r.query.get("timestamp", "")
            # the sign arrives URL-encoded: parse_qs decoded it once already
            mac = hmac.new(self.secret.encode(), f"{ts}\n{self.secret}".encode(),
                           hashlib.sha256).digest()
            if not ts or r.query.get("sign") != base64.b64encode(mac).decode() \
                    or abs(int(ts) / 1000 - time.time()) > 3600:
                self.refused.append("sign")
                return 200, {"errcode": 310000, "errmsg": "sign not match"}
            doc = r.json()
            md = doc.get("markdown", {})
            if doc.get("msgtype") != "markdown" or not md.get("title") or not md.get("text"):
                return 200, {"errcode": 40035, "errmsg": "invalid param"}
            if self.keyword and self.keyword not in md["text"]:
                self.refused.append("keyword")
                return 200, {"errcode": 310000, "errmsg": "keywords not in content"}
        elif self.kind == "feishu":
            doc = r.json()
            ts = str(doc.get("timestamp", ""))
            mac = hmac.new(f"{ts}\n{self.secret}".encode(), b"", hashlib.sha256).digest()
            if not ts or doc.get("sign") != base64.b64encode(mac).decode():
                self.refused.append("sign")
                return 200, {"code": 19021, "msg": "sign match fail or timestamp is not "
                             "within one hour from current time", "data": {}}
            if doc.get("msg_type") != "interactive" or "elements" not in doc.get("card", {}):
                return 200, {"code": 9499, "msg": "Bad Request", "data": {}}
        return 200, ok

    def handle(self, r: Received) -> tuple[int, dict[str, Any]]:
        self.received.append(r)
        status, answer = self.check(r)
        if self.script and answer in ({"errcode": 0, "errmsg": "ok"},
                                      {"code": 0, "msg": "success", "data": {}}):
            status, answer = self.script.popleft()
        if status == 200 and answer.get("errcode", answer.get("code", 0)) == 0:
            self.accepted.append(r)
        return status, answer


def serve(platform: Platform) -> Platform:
    """Start ``platform`` on a free loopback port."""

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            status, answer = platform.handle(Received(parts.path, query,
                                                      dict(self.headers.items()), body))
            data = orjson.dumps(answer)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_PUT = do_GET = _any  # noqa: N815  (http.server names)

        def log_message(self, *args: Any) -> None:
            pass

    platform.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=platform.server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return platform


def stop(platform: Platform) -> None:
    if platform.server is not None:
        platform.server.shutdown()
        platform.server.server_close()


def unquote(text: str) -> str:
    return unquote_plus(text)
