"""Tests of devtools.harness against the real Mosquitto, InfluxDB and VictoriaMetrics binaries."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from devtools.harness import (
    STATE_FILE_NAME,
    Harness,
    HarnessError,
    ManagedService,
    MissingBinaryError,
    ServiceStartError,
    find_binary,
    free_port,
    start_influxdb,
    start_mosquitto,
    start_victoria_metrics,
)
from devtools.procs import _proc_state

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEM_BROKER_PORT = 1883


# --------------------------------------------------------------------------- helpers


_PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def _child_subreaper() -> Iterator[None]:
    """Adopt orphaned descendants (as a real init would) so they can be reaped, not left zombies.

    The init of some containers never reaps, so without this a detached service
    that exits stays a zombie of pid 1 for ever.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _processes_with_arg(arg: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


class _MqttClient:
    """A paho client running its network loop in a thread, with events for the tests."""

    def __init__(self, port: int, client_id: str, *, clean_session: bool = True) -> None:
        self.port = port
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            self.session_present = bool(flags.session_present)
            self.connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, _reasons: Any, _p: Any) -> None:
        self.subscribed.set()

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        self.messages.put((message.topic, bytes(message.payload)))

    def __enter__(self) -> _MqttClient:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(5), "no CONNACK within 5 s"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(5), "no SUBACK within 5 s"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        assert info.is_published()


def _influx_values(url: str, query: str, db: str = "lifeline") -> list[list[Any]]:
    response = httpx.get(f"{url}/query", params={"db": db, "q": query}, timeout=10)
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert "error" not in result, result
    series = result.get("series", [])
    return [row for s in series for row in s["values"]]


def _influx_write(url: str, line: str, db: str = "lifeline") -> None:
    response = httpx.post(
        f"{url}/write", params={"db": db, "precision": "s"}, content=line, timeout=10
    )
    assert response.status_code == 204, response.text


# --------------------------------------------------------------------------- unit (no services)


def test_free_port_returns_distinct_bindable_ports() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    assert SYSTEM_BROKER_PORT not in ports
    for port in ports:
        assert 1024 < port < 65536
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # raises if the port were in use


def test_find_binary_names_the_apt_package() -> None:
    with pytest.raises(MissingBinaryError) as caught:
        find_binary("lifeline-no-such-binary-xyz", "lifeline-bogus-package")
    assert isinstance(caught.value, HarnessError)
    message = str(caught.value)
    assert "lifeline-no-such-binary-xyz" in message
    assert "apt-get install lifeline-bogus-package" in message


@pytest.mark.integration
def test_find_binary_finds_sbin_binary() -> None:
    path = find_binary("mosquitto", "mosquitto")
    assert os.access(path, os.X_OK)
    assert Path(path).name == "mosquitto"


def test_harness_rejects_unknown_service(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="grafana"):
        Harness(tmp_path).up(["grafana"])
    assert not (tmp_path / STATE_FILE_NAME).exists()


# --------------------------------------------------------------------------- integration


@pytest.mark.integration
def test_mosquitto_publish_subscribe_roundtrip(mosquitto: ManagedService) -> None:
    info = mosquitto.info
    assert info.port != SYSTEM_BROKER_PORT
    assert info.url == f"mqtt://127.0.0.1:{info.port}"
    assert mosquitto.is_running()
    conf = (info.log_file.parent / "mosquitto.conf").read_text()
    assert f"listener {info.port} 127.0.0.1" in conf
    assert "max_queued_messages 0" in conf
    assert "persistence true" in conf

    topic = f"lifeline/test/{secrets.token_hex(4)}/reading"
    with (
        _MqttClient(info.port, f"sub-{secrets.token_hex(4)}") as sub,
        _MqttClient(info.port, f"pub-{secrets.token_hex(4)}") as pub,
    ):
        sub.subscribe(topic)
        pub.publish(topic, b'{"ppm": 12.5}')
        assert sub.messages.get(timeout=5) == (topic, b'{"ppm": 12.5}')


@pytest.mark.integration
def test_influxdb_write_and_query(influxdb: ManagedService) -> None:
    url = influxdb.info.url
    assert url == f"http://127.0.0.1:{influxdb.info.port}"
    assert httpx.get(f"{url}/ping", timeout=5).status_code == 204
    _influx_write(url, "harness_probe,device=d1 value=42.5 1700000000")
    rows = _influx_values(url, "SELECT value FROM harness_probe WHERE device = 'd1'")
    assert rows == [["2023-11-14T22:13:20Z", 42.5]]


@pytest.mark.integration
def test_victoria_metrics_v2_write_and_export(victoria: ManagedService) -> None:
    url = victoria.info.url
    ts_ns = (int(time.time()) - 3600) * 1_000_000_000
    response = httpx.post(
        f"{url}/api/v2/write",
        params={"bucket": "lifeline", "precision": "ns"},
        content=f"harness_probe,device=vm1 value=7.25 {ts_ns}",
        timeout=10,
    )
    assert response.status_code == 204, response.text
    # Freshly written rows become searchable after ~1 s (up to ~10 s when an earlier query
    # came first); force_flush makes them visible at once.
    assert httpx.get(f"{url}/internal/force_flush", timeout=10).status_code == 200
    deadline = time.monotonic() + 5
    exported: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        response = httpx.post(
            f"{url}/api/v1/export",
            data={"match[]": '{__name__="harness_probe_value",device="vm1"}'},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        exported = [json.loads(line) for line in response.text.splitlines() if line]
        if exported:
            break
        time.sleep(0.3)
    assert len(exported) == 1
    assert exported[0]["values"] == [7.25]
    assert exported[0]["timestamps"] == [ts_ns // 1_000_000]


@pytest.mark.integration
def test_influxdb_restart_keeps_port_and_data(tmp_path: Path) -> None:
    service = start_influxdb(tmp_path)
    try:
        before = service.info
        _influx_write(before.url, "restart_probe,device=d2 value=3.5 1700000000")
        service.restart()
        after = service.info
        assert after.port == before.port
        assert after.data_dir == before.data_dir
        assert after.pid != before.pid
        assert not Path(f"/proc/{before.pid}").exists()
        assert service.is_running()
        rows = _influx_values(after.url, "SELECT value FROM restart_probe")
        assert rows == [["2023-11-14T22:13:20Z", 3.5]]
    finally:
        service.stop()


@pytest.mark.integration
def test_mosquitto_restart_keeps_persistent_session(tmp_path: Path) -> None:
    service = start_mosquitto(tmp_path)
    try:
        port, old_pid = service.info.port, service.info.pid
        topic = f"lifeline/test/{secrets.token_hex(4)}/queued"
        client_id = f"persist-{secrets.token_hex(4)}"
        with _MqttClient(port, client_id, clean_session=False) as sub:
            sub.subscribe(topic)
        with _MqttClient(port, f"pub-{secrets.token_hex(4)}") as pub:
            pub.publish(topic, b"queued while offline")

        service.restart()
        assert service.info.port == port
        assert service.info.pid != old_pid
        assert not Path(f"/proc/{old_pid}").exists()

        with _MqttClient(port, client_id, clean_session=False) as sub:
            assert sub.session_present is True
            assert sub.messages.get(timeout=5) == (topic, b"queued while offline")
    finally:
        service.stop()


@pytest.mark.integration
def test_stop_leaves_no_process_and_is_idempotent(tmp_path: Path) -> None:
    service = start_victoria_metrics(tmp_path)
    pid, port = service.info.pid, service.info.port
    assert Path(f"/proc/{pid}").exists()
    assert _port_accepts(port)
    service.stop()
    assert not Path(f"/proc/{pid}").exists()
    assert not service.is_running()
    assert not _port_accepts(port)
    service.stop()  # second stop is a no-op
    assert service.returncode == 0


@pytest.mark.integration
def test_start_failure_reports_log_tail_and_leaves_no_process(tmp_path: Path) -> None:
    with pytest.raises(ServiceStartError, match="bogus_harness_option"):
        start_mosquitto(tmp_path, extra_config="bogus_harness_option 1")
    conf = str(tmp_path.resolve() / "mosquitto" / "mosquitto.conf")
    assert "bogus_harness_option 1" in Path(conf).read_text()
    assert _processes_with_arg(conf) == []


@pytest.mark.integration
def test_port_held_by_another_broker_is_not_mistaken_for_ours(
    tmp_path: Path, mosquitto: ManagedService
) -> None:
    # Another broker answers CONNACKs on this port; the new one cannot bind it.
    with pytest.raises(ServiceStartError, match="in use"):
        start_mosquitto(tmp_path, port=mosquitto.info.port)
    conf = str(tmp_path.resolve() / "mosquitto" / "mosquitto.conf")
    assert _processes_with_arg(conf) == []
    assert mosquitto.is_running()


@pytest.mark.integration
def test_harness_detached_services_outlive_python_and_go_down(tmp_path: Path) -> None:
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from devtools.harness import Harness\n"
        "infos = Harness(Path(sys.argv[1])).up(detach=True)\n"
        "print(json.dumps({name: info.pid for name, info in infos.items()}))\n"
    )
    harness = Harness(tmp_path)
    with _child_subreaper(), contextlib.ExitStack() as cleanup:
        cleanup.callback(harness.down)
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        pids = json.loads(done.stdout.strip().splitlines()[-1])
        assert set(pids) == {"mosquitto", "influxdb"}

        status = harness.status()
        assert set(status) == {"mosquitto", "influxdb"}
        for name, (info, alive) in status.items():
            assert alive, name
            assert info.pid == pids[name]
        mqtt_info = status["mosquitto"][0]
        with (
            _MqttClient(mqtt_info.port, f"sub-{secrets.token_hex(4)}") as sub,
            _MqttClient(mqtt_info.port, f"pub-{secrets.token_hex(4)}") as pub,
        ):
            sub.subscribe("lifeline/detached")
            pub.publish("lifeline/detached", b"still here")
            assert sub.messages.get(timeout=5) == ("lifeline/detached", b"still here")
        influx_url = status["influxdb"][0].url
        assert httpx.get(f"{influx_url}/ping", timeout=5).status_code == 204

        with pytest.raises(HarnessError, match="already running"):
            harness.up()

        assert sorted(harness.down()) == ["influxdb", "mosquitto"]
        assert not (tmp_path / STATE_FILE_NAME).exists()
        for pid in pids.values():
            # Gone, or exited and waiting for its (sub)reaper: never still running.
            assert _proc_state(pid) in (None, "Z"), pid
        assert not _port_accepts(mqtt_info.port)
        assert harness.status() == {}
        assert harness.down() == []


@pytest.mark.integration
def test_harness_attached_up_status_down(tmp_path: Path) -> None:
    with Harness(tmp_path) as harness:
        infos = harness.up(["victoria-metrics"])
        pid = infos["victoria-metrics"].pid
        state = json.loads((tmp_path / STATE_FILE_NAME).read_text())
        assert state["services"]["victoria-metrics"]["pid"] == pid
        assert harness.status()["victoria-metrics"][1] is True

        harness.services["victoria-metrics"].restart()
        new_pid = harness.services["victoria-metrics"].info.pid
        assert new_pid != pid
        state = json.loads((tmp_path / STATE_FILE_NAME).read_text())
        assert state["services"]["victoria-metrics"]["pid"] == new_pid
    assert not Path(f"/proc/{new_pid}").exists()
    assert not (tmp_path / STATE_FILE_NAME).exists()


@pytest.mark.integration
def test_down_spares_pid_that_no_longer_belongs_to_the_binary(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        conf = tmp_path / "mosquitto" / "mosquitto.conf"
        state = {
            "version": 1,
            "detached": True,
            "services": {
                "mosquitto": {
                    "name": "mosquitto",
                    "host": "127.0.0.1",
                    "port": free_port(),
                    "pid": sleeper.pid,
                    "data_dir": str(tmp_path / "mosquitto" / "data"),
                    "log_file": str(tmp_path / "mosquitto" / "mosquitto.log"),
                    "argv": [find_binary("mosquitto", "mosquitto"), "-c", str(conf)],
                }
            },
        }
        (tmp_path / STATE_FILE_NAME).write_text(json.dumps(state))
        harness = Harness(tmp_path)
        assert harness.status()["mosquitto"][1] is False
        assert harness.down() == []
        time.sleep(0.2)
        assert sleeper.poll() is None
        assert not (tmp_path / STATE_FILE_NAME).exists()
    finally:
        sleeper.kill()
        sleeper.wait()
