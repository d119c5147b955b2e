"""``lifeline dashboards push`` against a local HTTP server speaking the Grafana HTTP API.

Grafana cannot be installed here; this server is the one permitted stand-in. It checks
every call the way Grafana does (bearer token, paths, payload shapes, folder existence)
and keeps what was uploaded, so idempotence and change reports are real.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dashboards.definitions import all_boards
from dashboards.errors import PushError
from dashboards.model import GrafanaTarget
from dashboards.push import push
from dashboards.render import InfluxSource, datasource_payload, setup_sdk, to_json
from lifeline.cli import main

pytestmark = pytest.mark.integration
TOKEN = "glsa_test_0123456789abcdef"


class FakeGrafana:
    """In-memory Grafana API: health, folders, datasources, dashboards."""

    def __init__(self, version: str = "10.4.2") -> None:
        self.version = version
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.bodies: list[tuple[str, str, Any]] = []
        self.fail_upload = False
        self.lock = threading.Lock()
        grafana = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with grafana.lock:
                    grafana.calls.append((method, self.path))
                    grafana.bodies.append((method, self.path, body))
                    code, out = grafana.route(method, self.path,
                                              self.headers.get("Authorization", ""), body)
                self._send(code, out)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, method: str, path: str, auth: str, body: Any) -> tuple[int, Any]:
        if path == "/api/health" and method == "GET":
            return 200, {"commit": "abc", "database": "ok", "version": self.version}
        if auth != f"Bearer {TOKEN}":
            return 401, {"message": "invalid API key"}
        if path == "/api/frontend/settings" and method == "GET":
            return 200, {"buildInfo": {"version": self.version, "commit": "abc",
                                       "edition": "Open Source"}}
        parts = path.split("?", maxsplit=1)[0].strip("/").split("/")
        if parts[:2] == ["api", "folders"]:
            if method == "GET" and len(parts) == 3:
                f = self.folders.get(parts[2])
                return (200, f) if f else (404, {"message": "folder not found"})
            if method == "POST" and len(parts) == 2:
                assert isinstance(body, dict) and body.get("title") and body.get("uid")
                if body["uid"] in self.folders:
                    return 409, {"message": "folder exists"}
                self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"],
                                             "id": len(self.folders) + 1}
                return 200, self.folders[body["uid"]]
        if parts[:2] == ["api", "datasources"]:
            if method == "GET" and parts[2:3] == ["uid"]:
                d = self.datasources.get(parts[3])
                return (200, {**d, "id": 7}) if d else (404, {"message": "not found"})
            if method in ("POST", "PUT"):
                assert body["type"] == "influxdb" and body["access"] == "proxy"
                assert body["url"].startswith("http") and body["jsonData"]["dbName"]
                assert body["name"] and body["uid"]
                stored = {k: v for k, v in body.items() if k != "secureJsonData"}
                self.datasources[body["uid"]] = stored
                return 200, {"datasource": stored, "message": "ok"}
        if parts[:3] == ["api", "dashboards", "uid"] and method == "GET":
            d = self.dashboards.get(parts[3])
            return (200, copy.deepcopy(d)) if d else (404, {"message": "Dashboard not found"})
        if parts == ["api", "dashboards", "db"] and method == "POST":
            return self._save(body)
        return 404, {"message": f"no route {method} {path}"}

    def _save(self, body: dict[str, Any]) -> tuple[int, Any]:
        if self.fail_upload:
            return 500, {"message": "database is locked"}
        dash = body.get("dashboard")
        if not isinstance(dash, dict) or not dash.get("uid") or not dash.get("title"):
            return 400, {"message": "dashboard needs uid and title"}
        if body.get("overwrite") is not True or dash.get("id") is not None:
            return 412, {"message": "version-mismatch"}
        folder = body.get("folderUid")
        if folder is not None and folder not in self.folders:
            return 400, {"message": "folder not found"}
        ids = [p["id"] for p in dash.get("panels", [])]
        if len(ids) != len(set(ids)):
            return 400, {"message": "duplicate panel ids"}
        previous = self.dashboards.get(dash["uid"])
        version = previous["dashboard"]["version"] + 1 if previous else 1
        self.dashboards[dash["uid"]] = {
            "dashboard": {**dash, "id": 42, "version": version},
            "meta": {"folderUid": folder or "", "slug": dash["uid"]}}
        return 200, {"status": "success", "uid": dash["uid"], "version": version}

    def uploads(self) -> int:
        return sum(1 for m, p in self.calls if m == "POST" and p == "/api/dashboards/db")


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    g = FakeGrafana()
    g.thread.start()
    yield g
    g.server.shutdown()
    g.server.server_close()


def _boards() -> list[dict[str, Any]]:
    setup_sdk()
    return [to_json(b) for b in all_boards()]


def _ds() -> dict[str, Any]:
    return datasource_payload(GrafanaTarget(), InfluxSource("http://influx:8086", "lifeline"))


def test_first_push_creates_everything_then_nothing_changes(grafana: FakeGrafana) -> None:
    boards = _boards()
    first = push(grafana.url, TOKEN, boards, folder="City Lifeline", datasource=_ds())
    assert first.grafana_version == "10.4.2"
    assert [(i.kind, i.change) for i in first.items] == (
        [("folder", "created"), ("datasource", "created")] + [("dashboard", "created")] * 6)
    assert grafana.folders["city-lifeline"]["title"] == "City Lifeline"
    assert grafana.datasources["lifeline-influxdb"]["jsonData"]["dbName"] == "lifeline"
    assert set(grafana.dashboards) == {b["uid"] for b in boards}
    for b in boards:
        stored = grafana.dashboards[b["uid"]]
        assert stored["meta"]["folderUid"] == "city-lifeline"
        assert {k: v for k, v in stored["dashboard"].items() if k not in ("id", "version")} == b
    for _method, path, body in grafana.bodies:
        if path == "/api/dashboards/db":
            assert body["overwrite"] is True and body["folderUid"] == "city-lifeline"
            targets = [t for p in body["dashboard"]["panels"] for t in p["targets"]]
            assert all(t["datasource"] == {"type": "influxdb", "uid": "lifeline-influxdb"}
                       and t["rawQuery"] is True for t in targets)
    uploads = grafana.uploads()
    again = push(grafana.url, TOKEN, _boards(), folder="City Lifeline", datasource=_ds())
    assert again.changed() == []
    assert grafana.uploads() == uploads  # nothing re-uploaded


def test_a_changed_dashboard_is_updated_by_uid(grafana: FakeGrafana) -> None:
    push(grafana.url, TOKEN, _boards())
    grafana.dashboards["lifeline-gas"]["dashboard"]["title"] = "edited by hand"
    result = push(grafana.url, TOKEN, _boards())
    assert [(i.uid, i.change) for i in result.changed()] == [("lifeline-gas", "updated")]
    assert grafana.dashboards["lifeline-gas"]["dashboard"]["title"] == "燃气 Gas"
    assert grafana.dashboards["lifeline-gas"]["dashboard"]["version"] == 2


def test_wrong_token_is_an_auth_error(grafana: FakeGrafana) -> None:
    with pytest.raises(PushError, match=r"refused the token \(401\)"):
        push(grafana.url, "glsa_wrong", _boards(), folder="x")
    assert grafana.uploads() == 0


def test_old_grafana_is_refused_before_any_change() -> None:
    g = FakeGrafana(version="9.5.2")
    g.thread.start()
    try:
        with pytest.raises(PushError, match=r"version 9\.5\.2.*Grafana 10\.0 or newer"):
            push(g.url, TOKEN, _boards(), folder="x", datasource=_ds())
        assert g.calls == [("GET", "/api/frontend/settings")]
    finally:
        g.server.shutdown()
        g.server.server_close()


def test_unreachable_server() -> None:
    with pytest.raises(PushError, match="unreachable"):
        push("http://127.0.0.1:9", TOKEN, _boards(), timeout=2)


def test_server_error_on_upload_is_reported(grafana: FakeGrafana) -> None:
    grafana.fail_upload = True
    with pytest.raises(PushError, match="database is locked"):
        push(grafana.url, TOKEN, _boards())


@pytest.mark.parametrize(("url", "token", "message"), [
    ("ftp://grafana", TOKEN, "http:// or https://"),
    ("http://grafana", "", "token is needed"),
])
def test_bad_push_arguments(url: str, token: str, message: str) -> None:
    with pytest.raises(PushError, match=message):
        push(url, token, _boards())


def test_cli_push_prints_changes_and_exit_codes(grafana: FakeGrafana, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./lifeline.toml; settings from defaults
    args = ["dashboards", "push", "--url", grafana.url, "--token", TOKEN, "--folder", "ops",
            "--create-datasource", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["grafana_version"] == "10.4.2"
    assert sum(i["change"] == "created" for i in out["items"]) == 8
    assert main(args[:-1]) == 0
    text = capsys.readouterr().out
    assert "0 changed, 8 unchanged" in text
    assert main(["dashboards", "push", "--url", grafana.url, "--token", "bad"]) == 3
    assert "refused the token" in capsys.readouterr().err
    assert main(["dashboards", "push", "--token", TOKEN]) == 2
    assert "no Grafana URL" in capsys.readouterr().err


class NotGrafana:
    """A real local server that is not Grafana: an HTML page (200), a 404 for every path,
    or a TCP port that accepts and closes the connection at once."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.server: ThreadingHTTPServer | None = None
        self.sock: socket.socket | None = None
        if mode == "close":
            self.sock = socket.create_server(("127.0.0.1", 0))
            self.port = int(self.sock.getsockname()[1])
            threading.Thread(target=self._accept_and_close, daemon=True).start()
            return
        status, body = (200, b"<!doctype html><html><body><h1>Welcome to nginx!</h1>"
                        b"</body></html>") if mode == "html" else (404, b"404 page not found")

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _accept_and_close(self) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.sock is not None:
            self.sock.close()


@pytest.mark.parametrize(("mode", "message"), [
    ("html", "is not Grafana: GET /api/frontend/settings has no build info"),
    ("404", "is not Grafana: GET /api/frontend/settings answered 404"),
    ("close", "unreachable while reading its version"),
])
def test_push_to_a_server_that_is_not_grafana_fails_in_one_line(
        mode: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    other = NotGrafana(mode)
    try:
        url = f"http://127.0.0.1:{other.port}"
        with pytest.raises(PushError, match=message):
            push(url, TOKEN, _boards(), folder="ops", timeout=5)
        code = main(["dashboards", "push", "--url", url, "--token", TOKEN, "--folder", "ops"])
    finally:
        other.close()
    captured = capsys.readouterr()
    assert code == 3
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert message in lines[0] and "Traceback" not in captured.err
