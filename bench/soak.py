"""Fault suite: steady load while a schedule injects faults; proves nothing was lost.

``lifeline bench soak [--minutes M] [--rate R] [--devices N] [--database sqlite|postgresql]``
starts its own Mosquitto (persistence on) and InfluxDB 1.x (harness), a
de-duplicating webhook receiver and ``lifeline serve`` as a child process, and a
publisher process sending gateway-style arrays (one message per device every
``--window`` seconds, QoS 1; "published" counts readings whose PUBACK arrived —
paho re-sends what was in flight across a broker restart).

The schedule (scaled to M minutes, one fault per slot, each recorded with its
window): broker restart on the same port; InfluxDB stopped (the spool is used);
the service database briefly unavailable (SQLite: another connection holds
``BEGIN EXCLUSIVE``; PostgreSQL: a TCP proxy in front of 127.0.0.1:5432 cuts
and refuses connections); the webhook receiver down, then slow; the service
SIGKILLed and restarted (with a small ``ingest.spool_max_bytes``); InfluxDB
stopped again so that small spool fills (back-pressure). Some devices cross an
alert limit at known times (one excursion each, in its own grid), a few fall
silent on purpose (they must go offline, nobody else may).

After a drain period it checks: readings published = stored (InfluxDB count),
no dead letters; every excursion gave one alert firing and one resolved
(outbox and ``lifeline_alert``), each alert has a case with its
``case.reported`` and ``case.dispatched`` events; every outbox delivery id
arrived exactly once at the receiver after de-duplication (duplicates counted);
only the silenced devices went offline; RSS and open fds of the service sampled
over time with growth per minute. ``ok`` is false with the failing checks named.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import sqlalchemy as sa

from alerts.delivery.signing import verify
from devices.model import Device
from devices.registry import write_inventory
from devtools.harness import ManagedService, free_port, start_influxdb, start_mosquitto
from lifeline.auth import new_token, token_digest
from lifeline.influxquery import count_values, influxql
from tsdb.schema import ALERT, DEVICE_STATUS

log = logging.getLogger(__name__)

SECRET = "soak-webhook-secret-0123456789"
RULE_ID = "soak-lel-high"
RULE = f"""
[[rule]]
id = "{RULE_ID}"
device_types = ["gas_alarm"]
metric = "lel"
above = 50.0
clear = 45.0
severity = "critical"
"""
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
QUIET_DEVICES = 3
MAX_OUTSTANDING = 20_000  # unacknowledged messages before the publisher waits


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lifeline bench soak``."""
    p.add_argument("--minutes", type=float, default=10.0, help="load duration (faults scale)")
    p.add_argument("--rate", type=float, default=10_000.0, help="readings/s offered")
    p.add_argument("--devices", type=int, default=5_000)
    p.add_argument("--window", type=float, default=10.0,
                   help="seconds of readings per gateway array message")
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--drain", type=float, default=600.0,
                   help="max seconds of calm load for alerts, offline and webhooks to settle")
    p.add_argument("--keep", action="store_true", help="keep the run directory")


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class Plan:
    """What the publisher sends: devices, rate, excursions and silences (offsets in s)."""

    port: int
    devices: list[str]
    rate: float
    window_s: float
    duration_s: float  # the faulted part; it goes on (calm) until told to stop
    start_at: float  # epoch seconds
    excursions: dict[str, tuple[float, float]]  # device -> (from, to) lel above the limit
    quiet: dict[str, float]  # device -> stops sending at this offset
    # device -> offset at which its lel, rising 1 %LEL/s from 2, crosses the limit (50);
    # it stays above (capped at 80) from then on: one alert that must fire exactly once
    drift: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class PublishResult:
    """What the publisher process reports at the end."""

    readings_sent: int = 0
    readings_acked: int = 0
    messages_sent: int = 0
    messages_acked: int = 0
    unacked_at_end: int = 0
    seconds: float = 0.0
    max_lag_s: float = 0.0
    stopped_at: float = 0.0  # epoch seconds of the last message
    held_s: float = 0.0  # time spent waiting because 20,000 messages were unacknowledged


def _publisher(plan: Plan, out: Any, progress: Any, stop: Any) -> None:
    """Publisher process: every device sends its last ``window_s`` of readings as an array,
    until ``stop`` is set."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415 - in the child process
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: PLC0415

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-pub-{uuid.uuid4().hex[:6]}",
                         protocol=MQTTProtocolVersion.MQTTv311, clean_session=True)
    client.max_inflight_messages_set(2000)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(1, 2)
    client.connect_async("127.0.0.1", plan.port, 30)
    client.loop_start()
    n_dev = len(plan.devices)
    per_msg = max(1, round(plan.rate * plan.window_s / n_dev))
    step_s = plan.window_s / per_msg
    seq = [0] * n_dev
    res = PublishResult()
    outstanding: list[tuple[Any, int]] = []  # (message info, readings)
    tick = 0.1
    slots = max(1, round(plan.window_s / tick))
    while time.time() < plan.start_at:
        time.sleep(0.01)
    began = time.monotonic()
    k = 0
    while True:
        due = k * tick
        now = time.monotonic() - began
        if stop.is_set() or due > plan.duration_s + 3600:
            break
        if due > now:
            time.sleep(due - now)
        res.max_lag_s = max(res.max_lag_s, now - due)
        # paho's packet ids wrap at 65,535 and are not checked for reuse: a broker that
        # acknowledges slowly holds the publisher back (as a gateway's own queue would)
        held = time.monotonic()
        while len(outstanding) > MAX_OUTSTANDING and not stop.is_set():
            time.sleep(0.05)
            outstanding = _settle(outstanding, res)
        res.held_s += time.monotonic() - held
        off = time.time() - plan.start_at
        for d in range(k % slots, n_dev, slots):
            dev = plan.devices[d]
            stop_at = plan.quiet.get(dev)
            if stop_at is not None and off >= stop_at:
                continue
            end_ms = int(time.time() * 1000)
            exc = plan.excursions.get(dev)
            cross = plan.drift.get(dev)
            readings = []
            for j in range(per_msg):
                ts = end_ms - int((per_msg - 1 - j) * step_s * 1000)
                t_off = ts / 1000 - plan.start_at
                seq[d] += 1
                if exc is not None:
                    lel = 62.0 if exc[0] <= t_off < exc[1] else 4.0
                elif cross is not None:
                    lel = drift_lel(t_off, cross)
                else:
                    lel = round(2.0 + (seq[d] % 50) / 10, 1)
                readings.append({"ts": ts, "seq": seq[d], "values": {"lel": lel}})
            topic = f"lifeline/{dev}/telemetry"
            body = orjson.dumps(readings)
            info = _publish(client, topic, body)
            outstanding.append((info, per_msg))
            res.messages_sent += 1
            res.readings_sent += per_msg
        outstanding = _settle(outstanding, res)
        progress.value = res.readings_acked
        k += 1
    res.stopped_at = time.time()
    res.seconds = round(time.monotonic() - began, 1)
    deadline = time.monotonic() + 180
    while outstanding and time.monotonic() < deadline:
        time.sleep(0.2)
        outstanding = _settle(outstanding, res)
        progress.value = res.readings_acked
    res.unacked_at_end = sum(n for _, n in outstanding)
    client.disconnect()
    client.loop_stop()
    out.put(res)


def drift_lel(t_off: float, cross: float) -> float:
    """The drifting device's lel at ``t_off`` s: rising 1 %LEL/s through the limit (50) at
    ``cross``, between 2 and 80."""
    return round(max(2.0, min(80.0, 50.0 + (t_off - cross))), 3)


def _publish(client: Any, topic: str, body: bytes) -> Any:
    """QoS 1 publish; while disconnected paho keeps the message and sends it on reconnect
    (its ``rc`` says "not connected", which would make ``is_published`` raise)."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415 - in the child process

    info = client.publish(topic, body, qos=1)
    if info.rc == mqtt.MQTT_ERR_NO_CONN:
        info.rc = mqtt.MQTT_ERR_SUCCESS
    return info


def _settle(outstanding: list[tuple[Any, int]], res: PublishResult) -> list[tuple[Any, int]]:
    """Count acknowledged messages (paho itself sends again, with DUP, what was in flight
    when the connection dropped)."""
    keep = []
    for item in outstanding:
        if item[0].is_published():
            res.readings_acked += item[1]
            res.messages_acked += 1
        else:
            keep.append(item)
    return keep


# --------------------------------------------------------------------------- receiver


class Receiver:
    """Webhook receiver that can be taken down (connection refused) and made slow.

    Verifies signatures and de-duplicates on ``X-Lifeline-Delivery``; the state
    survives down/up (it is the receiving system, only its HTTP front goes away).
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.port = free_port()
        self.delay_s = 0.0
        self.lock = threading.Lock()
        self.seen: dict[str, str] = {}  # delivery id -> event
        self.duplicates = 0
        self.bad_signatures = 0
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """Where the service posts."""
        return f"http://127.0.0.1:{self.port}/hooks/lifeline"

    def up(self) -> None:
        """Listen (again) on the same port."""
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if rx.delay_s:
                    time.sleep(rx.delay_s)
                status = rx.accept({k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        for _ in range(50):  # the old socket may linger for a moment
            try:
                server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"receiver cannot listen on port {self.port} again")
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True, name="soak-rx").start()
        self._server = server

    def down(self) -> None:
        """Stop listening: the service gets connection refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accept(self, headers: dict[str, str], body: bytes) -> int:
        """Verify, de-duplicate, record."""
        delivery = headers.get("x-lifeline-delivery", "")
        ok = verify(self.secret, headers.get("x-lifeline-timestamp", ""), body,
                    headers.get("x-lifeline-signature", ""))
        with self.lock:
            self.requests += 1
            if not ok:
                self.bad_signatures += 1
                return 401
            if delivery in self.seen:
                self.duplicates += 1
                return 200
            self.seen[delivery] = headers.get("x-lifeline-event", "")
        return 200


# --------------------------------------------------------------------------- database faults


class TcpProxy:
    """A loopback TCP proxy to ``target``; :meth:`cut` closes every connection and refuses
    new ones for a while (the real server behind it is untouched).

    With ``more`` targets it is a small layer-4 balancer: each new connection goes to the
    next target in turn that accepts it (a refusing one is skipped)."""

    def __init__(self, target: tuple[str, int], *more: tuple[str, int]) -> None:
        self.target = target
        self.targets = [target, *more]
        self._next = 0
        self.blocked = threading.Event()
        self.refused = 0
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="soak-proxy").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.blocked.is_set():
                self.refused += 1
                client.close()
                continue
            upstream = self._connect()
            if upstream is None:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        """A connection to the next target that accepts one (None: none does)."""
        n = len(self.targets)
        first, self._next = self._next, (self._next + 1) % n
        for i in range(n):
            try:
                return socket.create_connection(self.targets[(first + i) % n], timeout=5)
            except OSError:
                continue
        return None

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._socks.discard(src)
                self._socks.discard(dst)

    def cut(self, seconds: float) -> None:
        """Close every open connection and refuse new ones for ``seconds``."""
        self.block()
        time.sleep(seconds)
        self.unblock()

    def block(self) -> None:
        """Close every open connection and refuse new ones until :meth:`unblock`."""
        self.blocked.set()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def unblock(self) -> None:
        """Accept connections again."""
        self.blocked.clear()

    def close(self) -> None:
        """Stop accepting."""
        self._closed = True
        self._listener.close()


def sqlite_exclusive(path: Path, seconds: float) -> None:
    """Hold ``BEGIN EXCLUSIVE`` on the service's SQLite file for ``seconds``."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


# --------------------------------------------------------------------------- the service


@dataclass(slots=True)
class Sample:
    """One observation of the service process."""

    t: float
    pid: int
    rss_mb: float
    fds: int


@dataclass(slots=True)
class ServeProcess:
    """``lifeline serve`` as a child process (so it can be SIGKILLed)."""

    env: dict[str, str]
    log_dir: Path
    api_port: int
    token: str
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    starts: int = 0
    metrics_last: dict[str, float] = field(default_factory=dict)
    metrics_done: dict[str, float] = field(default_factory=dict)  # summed over killed runs

    def start(self, extra: dict[str, str] | None = None,
              until: Callable[[], bool] | None = None) -> float:
        """Start and wait for "serving:" in its log (or for ``until()`` to hold); returns
        the seconds it took."""
        self.starts += 1
        self.ready = False
        env = {**self.env, **(extra or {})}
        logfile = self.log_dir / f"serve{self.starts}.log"
        began = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "lifeline", "serve"], env=env,
                                     stdout=logfile.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

        def started() -> bool:
            if until is not None:
                return until()
            return b"serving:" in logfile.read_bytes()

        while not started():
            if self.proc.poll() is not None:
                raise RuntimeError(f"lifeline serve exited: {logfile.read_text()[-3000:]}")
            if time.monotonic() - began > 120:
                raise RuntimeError(f"lifeline serve did not start: {logfile.read_text()[-3000:]}")
            time.sleep(0.1)
        self.ready = True
        return time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL the service (no clean-up of any kind)."""
        assert self.proc is not None
        self._fold_metrics()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.scrape()
        self._fold_metrics()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9

    def _fold_metrics(self) -> None:
        for k, v in self.metrics_last.items():
            self.metrics_done[k] = self.metrics_done.get(k, 0.0) + v
        self.metrics_last = {}

    def sample(self) -> Sample | None:
        """RSS and open fds of the running process."""
        if self.proc is None or not self.ready or self.proc.poll() is not None:
            return None
        pid = self.proc.pid
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return None
        rss_kb = next((int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmRSS:")), 0)
        return Sample(time.monotonic(), pid, round(rss_kb / 1024, 1), fds)

    WANTED = ("lifeline_ingest_spooled_lines_total", "lifeline_ingest_spool_replayed_lines_total",
              "lifeline_ingest_backpressure_seconds_total", "lifeline_ingest_duplicates_total",
              "lifeline_ingest_write_failures_total", "lifeline_ingest_dropped_lines_total")

    def scrape(self) -> None:
        """Remember the ingest counters of the running process (from ``/metrics``)."""
        try:
            r = httpx.get(f"http://127.0.0.1:{self.api_port}/metrics", timeout=3,
                          headers={"Authorization": f"Bearer {self.token}"})
        except httpx.HTTPError:
            return
        if r.status_code != 200:
            return
        for line in r.text.splitlines():
            name, _, value = line.partition(" ")
            if name in self.WANTED:
                with contextlib.suppress(ValueError):
                    self.metrics_last[name] = float(value)

    def totals(self) -> dict[str, float]:
        """Ingest counters summed over every run of the service."""
        out = dict(self.metrics_done)
        for k, v in self.metrics_last.items():
            out[k] = out.get(k, 0.0) + v
        return {k.removeprefix("lifeline_ingest_").removesuffix("_total"): round(v, 1)
                for k, v in sorted(out.items())}


# --------------------------------------------------------------------------- run


@dataclass(slots=True)
class FaultLog:
    """Each fault with its start and end (seconds since the load began)."""

    t0: float
    faults: list[dict[str, Any]] = field(default_factory=list)

    def record(self, name: str, began: float, detail: dict[str, Any] | None = None) -> None:
        """Append ``name`` from ``began`` (monotonic) to now."""
        entry: dict[str, Any] = {"fault": name, "start_s": round(began - self.t0, 1),
                                 "end_s": round(time.monotonic() - self.t0, 1)}
        entry.update(detail or {})
        self.faults.append(entry)
        log.warning("fault %s: %.1f-%.1f s", name, entry["start_s"], entry["end_s"])


def _growth(samples: list[Sample]) -> dict[str, Any]:
    """Per run of the service (after it is serving): RSS and fds first/last/max and the
    slope per minute over its samples after the first fifth (warm-up)."""
    runs: dict[int, list[Sample]] = {}
    for s in samples:
        runs.setdefault(s.pid, []).append(s)
    out = []
    longest: dict[str, Any] = {}
    for pid, ss in runs.items():
        steady = ss[len(ss) // 5:] if len(ss) >= 5 else ss
        t = np.array([s.t for s in steady]) / 60.0
        entry: dict[str, Any] = {
            "pid": pid, "samples": len(ss), "minutes": round((ss[-1].t - ss[0].t) / 60, 2),
            "steady_minutes": round(float(t[-1] - t[0]), 2),
            "rss_mb_first": steady[0].rss_mb, "rss_mb_last": steady[-1].rss_mb,
            "rss_mb_max": max(s.rss_mb for s in ss),
            "fds_first": steady[0].fds, "fds_last": steady[-1].fds,
            "fds_max": max(s.fds for s in ss)}
        if len(steady) >= 3 and t[-1] > t[0]:
            entry["rss_mb_per_min"] = round(float(np.polyfit(t, [s.rss_mb for s in steady],
                                                              1)[0]), 2)
            entry["fds_per_min"] = round(float(np.polyfit(t, [s.fds for s in steady], 1)[0]), 2)
        out.append(entry)
        if entry["steady_minutes"] > longest.get("steady_minutes", -1):
            longest = entry
    # flat: over the longest run, open fds end within 10 of where they started and RSS
    # within 25 % + 30 MB (queues, caches and the dedup window fill during faults)
    flat = bool(longest) and (longest["fds_last"] <= longest["fds_first"] + 10 and
                              longest["rss_mb_last"] <= longest["rss_mb_first"] * 1.25 + 30)
    return {"runs": out, "longest_steady_minutes": longest.get("steady_minutes", 0.0),
            "flat": flat}


def _plan_times(minutes: float) -> dict[str, tuple[float, float]]:
    """Planned (start, duration) of each fault in seconds after the load starts."""
    total = minutes * 60
    s = minutes / 10

    def dur(at_10: float, least: float) -> float:
        return max(least, at_10 * s)

    return {
        "broker_restart": (0.10 * total, dur(5, 2)),
        "influxdb_stopped": (0.18 * total, dur(60, 8)),
        "database_unavailable": (0.34 * total, dur(10, 4)),
        "webhook_down": (0.42 * total, dur(120, 8)),
        "webhook_slow": (0.0, dur(60, 6)),  # right after webhook_down
        "service_sigkill": (0.74 * total, 0.0),
        "spool_full": (0.82 * total, dur(40, 10)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak; returns the JSON document."""
    root = Path(tempfile.mkdtemp(prefix="lifeline-soak-"))

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(f"signal {signum}")  # run the clean-up below

    signal.signal(signal.SIGTERM, on_term)
    mosq: ManagedService | None = None
    influx: ManagedService | None = None
    serve: ServeProcess | None = None
    rx: Receiver | None = None
    proxy: TcpProxy | None = None
    pub: Any = None
    pg_name = ""
    try:
        # Persistence on; the broker restart below is a clean stop, which saves the queues.
        # (The harness's autosave every second would rewrite the whole backlog each second
        # while the service catches up after a fault: a stall no production broker has.)
        mosq = start_mosquitto(root, extra_config="autosave_interval 30")
        influx = start_influxdb(root, database="soak")
        db_url, direct_url = _database(args.database, root)
        if args.database == "postgresql":
            pg_name = direct_url.rsplit("/", 1)[1]
            proxy = TcpProxy(("127.0.0.1", 5432))
            db_url = direct_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        total_s = args.minutes * 60
        n_exc = max(3, int(total_s * 0.8 // max(4.0, total_s / 30)))
        devices = [f"gas-{i:05d}" for i in range(args.devices)]
        exc_devices = devices[:n_exc]
        quiet_devices = devices[n_exc:n_exc + QUIET_DEVICES]
        gap = total_s * 0.8 / n_exc
        excursions = {d: (0.05 * total_s + i * gap, 0.05 * total_s + i * gap + 6.0)
                      for i, d in enumerate(exc_devices)}
        quiet = dict.fromkeys(quiet_devices, 0.5 * total_s)
        # expected reporting interval in the inventory (offline after 3x): two messages
        interval_s = max(10.0, 2 * args.window)
        write_inventory(root / "inventory.csv", [
            Device(d, "gas_alarm", grid=f"AL{i:03d}" if d in excursions else f"G{i % 50}",
                   district=f"D{i % 7}", unit="燃气公司", interval_s=interval_s)
            for i, d in enumerate(devices)])
        (root / "rules.toml").write_text(RULE)
        rx = Receiver(SECRET)
        rx.up()
        token = new_token()
        api_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
        env.update({
            "LIFELINE_RUN_DIR": str(root / "run"),
            "LIFELINE_MQTT__PORT": str(mosq.info.port),
            "LIFELINE_MQTT__CLIENT_ID": "soak-serve",
            "LIFELINE_INFLUX__URL": influx.info.url,
            "LIFELINE_INFLUX__DATABASE": "soak",
            "LIFELINE_INFLUX__RETRIES": "2",
            "LIFELINE_INFLUX__TIMEOUT": "5",
            "LIFELINE_DATABASE__URL": db_url,
            "LIFELINE_DEVICES__INVENTORY": str(root / "inventory.csv"),
            "LIFELINE_DEVICES__CHECK_INTERVAL": "1s",
            "LIFELINE_RULES__PATHS": orjson.dumps([str(root / "rules.toml")]).decode(),
            "LIFELINE_RULES__SAVE_INTERVAL": "30s",
            "LIFELINE_WEBHOOK__URL": rx.url,
            "LIFELINE_WEBHOOK__SECRET": SECRET,
            "LIFELINE_WEBHOOK__TIMEOUT": "5",
            "LIFELINE_WEBHOOK__BASE_DELAY": "0.5",
            "LIFELINE_WEBHOOK__MAX_DELAY": "5",
            "LIFELINE_WEBHOOK__MAX_ATTEMPTS": "1000",
            "LIFELINE_ALERTS__RESOLVE_DELAY": "2s",
            "LIFELINE_ALERTS__TICK_INTERVAL": "0.5",
            "LIFELINE_API__PORT": str(api_port),
            "LIFELINE_API__TOKENS": orjson.dumps([{"name": "soak", "role": "viewer",
                                                   "sha256": token_digest(token)}]).decode(),
        })
        (root / "logs").mkdir()
        serve = ServeProcess(env, root / "logs", api_port, token)
        startup_s = serve.start()

        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        progress = ctx.Value("q", 0)
        start_at = time.time() + 3.0
        plan = Plan(mosq.info.port, devices, args.rate, args.window, total_s, start_at,
                    excursions, quiet)
        stop_pub = ctx.Event()
        pub = ctx.Process(target=_publisher, args=(plan, out, progress, stop_pub), daemon=True)
        pub.start()
        time.sleep(max(0.0, start_at - time.time()))
        t0 = time.monotonic()
        faults = FaultLog(t0)
        samples: list[Sample] = []
        stop_sampling = threading.Event()

        def sampler() -> None:
            while not stop_sampling.wait(5.0):
                assert serve is not None
                s = serve.sample()
                if s is not None:
                    samples.append(s)
                    serve.scrape()

        sampling = threading.Thread(target=sampler, daemon=True)
        sampling.start()
        schedule = _plan_times(args.minutes)

        def at(offset: float) -> None:
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)

        # 1. broker restart on the same port (persistence: sessions and queues survive)
        start, length = schedule["broker_restart"]
        at(start)
        began = time.monotonic()
        mosq.stop()
        time.sleep(length)
        mosq.start()
        faults.record("broker_restart", began, {"port": mosq.info.port})
        # 2. InfluxDB stopped: the writer spools
        start, length = schedule["influxdb_stopped"]
        at(start)
        began = time.monotonic()
        influx.stop()
        time.sleep(length)
        influx.start()
        faults.record("influxdb_stopped", began)
        # 3. the service database briefly unavailable
        start, length = schedule["database_unavailable"]
        at(start)
        began = time.monotonic()
        if proxy is not None:
            proxy.cut(length)
            detail: dict[str, Any] = {"how": "tcp proxy cut and refused connections",
                                      "refused": proxy.refused}
        else:
            sqlite_exclusive(Path(db_url.removeprefix("sqlite:///")), length)
            detail = {"how": "BEGIN EXCLUSIVE held by another connection"}
        faults.record("database_unavailable", began, detail)
        # 4. webhook receiver down, then slow
        start, length = schedule["webhook_down"]
        at(start)
        began = time.monotonic()
        rx.down()
        time.sleep(length)
        rx.delay_s = 2.0
        rx.up()
        faults.record("webhook_down", began)
        began = time.monotonic()
        time.sleep(schedule["webhook_slow"][1])
        rx.delay_s = 0.0
        faults.record("webhook_slow", began, {"answer_after_s": 2.0})
        # 5. SIGKILL, restart with a small spool (for the next fault)
        start, _ = schedule["service_sigkill"]
        at(start)
        began = time.monotonic()
        serve.kill()
        restart_s = serve.start({"LIFELINE_INGEST__SPOOL_MAX_BYTES": str(1 << 20)})
        faults.record("service_sigkill", began, {"restart_s": round(restart_s, 1),
                                                 "spool_max_bytes_after": 1 << 20})
        # 6. InfluxDB stopped with that small spool: it fills, back-pressure
        start, length = schedule["spool_full"]
        at(start)
        began = time.monotonic()
        influx.stop()
        time.sleep(length)
        influx.start()
        faults.record("spool_full", began, {"spool_max_bytes": 1 << 20})

        # Calm: the load goes on until every alert, offline device and webhook has
        # settled; then the publisher stops and everything it published must be stored.
        at(total_s)
        calm = time.monotonic()
        conditions = _drain(args.drain, direct_url, exc_devices, quiet_devices)
        stop_pub.set()
        pub.join(300)
        published: PublishResult = out.get(timeout=10)
        conditions["stored_all"] = _wait_stored(influx.info.url, published.readings_acked)
        drain_s = time.monotonic() - calm
        serve.scrape()
        stop_sampling.set()
        sampling.join(10)
        code = serve.stop()  # quiescent from here on: compare the stores
        # Devices fall silent when the publisher stops; offline decisions stamped from then
        # on (last sign of life + 3 intervals) belong to the end of the run, not to a fault.
        cutoff_ns = int((published.stopped_at - args.window - 2 + 3 * interval_s) * 1e9)
        result = _verify(influx.info.url, direct_url, published, exc_devices, quiet_devices,
                         rx, cutoff_ns)
        result["checks"]["service_exit_code_0"] = code == 0
        growth = _growth(samples)
        if growth["longest_steady_minutes"] >= 3:
            result["checks"]["resources_flat"] = growth["flat"]
        failing = [k for k, v in result["checks"].items() if not v]
        return {
            "benchmark": "soak", "ok": not failing, "failing_checks": failing,
            "cpus": os.cpu_count(), "database": args.database,
            "load": {"minutes": args.minutes, "devices": args.devices,
                     "offered_readings_per_s": args.rate, "readings_per_message": max(
                         1, round(args.rate * args.window / args.devices)),
                     "seconds_with_calm": published.seconds,
                     "achieved_readings_per_s": round(published.readings_sent
                                                      / max(published.seconds, 1e-9)),
                     "publisher_max_lag_s": round(published.max_lag_s, 2),
                     "publisher_held_s": round(published.held_s, 1),
                     "service_startup_s": round(startup_s, 1)},
            "faults": faults.faults,
            "calm_s": round(drain_s, 1), "calm_conditions": conditions,
            **result["figures"],
            "ingest_counters": serve.totals(),
            "resources": growth,
            "checks": result["checks"],
        }
    finally:
        if pub is not None and pub.is_alive():
            pub.terminate()
        if serve is not None:
            serve.stop()
        if rx is not None:
            rx.down()
        if proxy is not None:
            proxy.close()
        if mosq is not None:
            mosq.stop()
        if influx is not None:
            influx.stop()
        if pg_name:
            _drop_pg(pg_name)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _database(kind: str, root: Path, prefix: str = "lifeline_soak") -> tuple[str, str]:
    """(url for the service, url for the checks); PostgreSQL gets a fresh database."""
    if kind == "sqlite":
        url = f"sqlite:///{root / 'lifeline.db'}"
        return url, url
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    return url, url


def _drop_pg(name: str) -> None:
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    admin.dispose()


def _rows(url: str, query: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.exec_driver_sql(query))
    finally:
        engine.dispose()


def _wait(check: Callable[[], bool], limit_s: float) -> bool:
    """Poll ``check`` (errors count as not yet) until true or ``limit_s`` passed."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            if check():
                return True
        except Exception as exc:  # a store still catching up: ask again
            log.debug("waiting: %s", exc)
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)


def _wait_stored(url: str, published: int, database: str = "soak") -> bool:
    """Wait until InfluxDB holds ``published`` readings, as long as the count still grows
    (a service that fell behind catches up from the broker's queue)."""
    last, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 60:
        try:
            stored = count_values(url, database, ["gas_alarm"])
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("counting: %s", exc)
            stored = last
        if stored >= published:
            return True
        if stored > last:
            last, still_since = stored, time.monotonic()
        time.sleep(2.0)
    return False


def _drain(limit_s: float, db_url: str, exc: list[str], quiet: list[str]) -> dict[str, bool]:
    """Wait until every excursion is resolved, the silenced devices are offline and the
    outbox is delivered (or ``limit_s`` passed)."""

    def count(query: str) -> int:
        return int(_rows(db_url, query)[0][0])

    conditions: dict[str, Callable[[], bool]] = {
        "excursions_resolved": lambda: count(
            f"SELECT count(*) FROM alerts WHERE state = 'resolved' AND rule_id = '{RULE_ID}'"
        ) >= len(exc),
        "quiet_offline": lambda: count(
            "SELECT count(*) FROM device_status WHERE link = 'offline'") >= len(quiet),
        "outbox_delivered": lambda: count(
            "SELECT count(*) FROM webhook_outbox WHERE status <> 'delivered'") == 0,
    }
    deadline = time.monotonic() + limit_s
    done = dict.fromkeys(conditions, False)
    for name, check in conditions.items():
        done[name] = _wait(check, max(0.0, deadline - time.monotonic()))
    # the last transitions' notifications (resolve delay, clock ticks), delivered too
    time.sleep(3.0)
    done["outbox_delivered"] = _wait(conditions["outbox_delivered"],
                                     max(5.0, deadline - time.monotonic()))
    return done


def _verify(influx_url: str, db_url: str, pub: PublishResult, exc: list[str],
            quiet: list[str], rx: Receiver, cutoff_ns: int) -> dict[str, Any]:
    """The figures and checks of the JSON document."""
    stored = count_values(influx_url, "soak", ["gas_alarm"])
    dead = _rows(db_url, "SELECT count(*) FROM dead_letters")[0][0]
    outbox = _rows(db_url, "SELECT delivery_id, event, status, payload FROM webhook_outbox")
    events: dict[str, int] = {}
    for _, ev, _, _ in outbox:
        events[ev] = events.get(ev, 0) + 1
    by_device: dict[tuple[str, str], int] = {}
    for _, ev, _, payload in outbox:
        if ev.startswith("alert."):
            alert = orjson.loads(payload).get("alert") or {}
            key = (str(alert.get("device", "")), f"{alert.get('rule', '')}|{ev}")
            by_device[key] = by_device.get(key, 0) + 1
    exc_ok = [d for d in exc if by_device.get((d, f"{RULE_ID}|alert.firing")) == 1
              and by_device.get((d, f"{RULE_ID}|alert.resolved")) == 1]
    alerts = _rows(db_url, "SELECT device_id, rule_id, state, case_id FROM alerts")
    alerts_without_case = [a[0] for a in alerts if a[3] is None]
    case_ids = {a[3] for a in alerts if a[3] is not None}
    exc_cases = {a[3] for a in alerts if a[3] is not None and a[1] == RULE_ID}
    case_events: dict[int, set[str]] = {}
    for _, ev, _, payload in outbox:
        case = orjson.loads(payload).get("case") or {}
        if ev.startswith("case.") and case.get("id") is not None:
            case_events.setdefault(int(case["id"]), set()).add(ev)
    # every case is reported; the critical excursions' cases are also registered and
    # dispatched (the minor offline alerts' case waits for a duty officer)
    cases_missing_events = sorted(
        c for c in case_ids
        if not ({"case.reported", "case.dispatched"} if c in exc_cases else {"case.reported"})
        <= case_events.get(c, set()))
    influx_alerts = _influx_alert_counts(influx_url, RULE_ID)
    transitions = sum(_influx_alert_counts(influx_url, None).values())
    alert_events = events.get("alert.firing", 0) + events.get("alert.resolved", 0)
    exc_influx_ok = [d for d in exc if influx_alerts.get((d, "firing"), 0) == 1
                     and influx_alerts.get((d, "resolved"), 0) == 1]
    changes = _rows(db_url, "SELECT device_id, ts_ns FROM device_status_changes "
                    "WHERE change = 'offline'")
    changes += _rows(db_url, "SELECT device_id, since_ns FROM device_status "
                     "WHERE link = 'offline'")
    changes += _influx_offline(influx_url)
    offline = {d for d, ts in changes if ts < cutoff_ns}
    at_end = {d for d, ts in changes if ts >= cutoff_ns} - offline
    wrongly_offline = sorted(offline - set(quiet))
    quiet_offline = sorted(offline & set(quiet))
    outbox_ids = {r[0] for r in outbox}
    with rx.lock:
        received = dict(rx.seen)
        duplicates, bad_sigs, requests = rx.duplicates, rx.bad_signatures, rx.requests
    undelivered = sorted(outbox_ids - set(received))
    unknown = sorted(set(received) - outbox_ids)
    not_delivered_status = sum(1 for r in outbox if r[2] != "delivered")
    figures = {
        "readings": {"sent": pub.readings_sent, "published_acked": pub.readings_acked,
                     "stored": stored, "lost": pub.readings_acked - stored,
                     "unacked_by_broker_at_end": pub.unacked_at_end,
                     "messages_acked": pub.messages_acked, "dead_lettered": dead},
        "alerts": {"excursions": len(exc),
                   "excursions_with_one_firing_and_one_resolved_webhook": len(exc_ok),
                   "excursions_with_one_firing_and_one_resolved_in_influx": len(exc_influx_ok),
                   "alert_transitions_in_influx": transitions,
                   "alert_webhook_events": alert_events,
                   "alerts": len(alerts), "alerts_without_case": alerts_without_case,
                   "cases": len(case_ids), "cases_missing_reported_or_dispatched":
                       cases_missing_events},
        "webhooks": {"outbox_events": len(outbox), "by_event": dict(sorted(events.items())),
                     "delivered_unique": len(set(received) & outbox_ids),
                     "undelivered": undelivered[:20], "unknown_ids_received": unknown[:20],
                     "duplicates_received": duplicates, "requests": requests,
                     "bad_signatures": bad_sigs, "outbox_not_delivered": not_delivered_status},
        "devices": {"intended_offline": len(quiet), "intended_offline_marked": len(quiet_offline),
                    "wrongly_offline": len(wrongly_offline),
                    "offline_after_load_stopped": len(at_end),
                    "wrongly_offline_ids": wrongly_offline[:20]},
    }
    checks = {
        "readings_zero_loss": stored == pub.readings_acked and pub.unacked_at_end == 0,
        "no_dead_letters": dead == 0,
        "every_excursion_one_firing_one_resolved_webhook": len(exc_ok) == len(exc),
        "every_excursion_in_influx": len(exc_influx_ok) == len(exc),
        "every_alert_transition_notified": transitions == alert_events > 0,
        "every_alert_has_case": not alerts_without_case and bool(alerts),
        "every_case_reported_and_dispatched": not cases_missing_events,
        "webhooks_exactly_once": (not undelivered and not unknown and bad_sigs == 0
                                  and not_delivered_status == 0),
        "intended_offline_only": (not wrongly_offline and len(quiet_offline) == len(quiet)),
    }
    return {"figures": figures, "checks": checks}


def _influx_alert_counts(url: str, rule: str | None,
                         database: str = "soak") -> dict[tuple[str, str], int]:
    """(device, state) → number of ``lifeline_alert`` points (of ``rule``, else all)."""
    out: dict[tuple[str, str], int] = {}
    where = f" WHERE rule = '{rule}'" if rule else ""
    series = influxql(url, database, f'SELECT device, "state" FROM "{ALERT.name}"{where}')
    for s in series:
        cols = s["columns"]
        di, si = cols.index("device"), cols.index("state")
        for row in s["values"]:
            key = (str(row[di]), str(row[si]))
            out[key] = out.get(key, 0) + 1
    return out


def _influx_offline(url: str) -> list[tuple[str, int]]:
    """(device, time in ns) of every ``offline`` change in ``lifeline_device_status``."""
    resp = httpx.get(f"{url}/query", timeout=30, params={
        "db": "soak", "epoch": "ns",
        "q": f"SELECT device, change FROM \"{DEVICE_STATUS.name}\" WHERE change = 'offline'"})
    resp.raise_for_status()
    series = resp.json()["results"][0].get("series", [])
    found: list[tuple[str, int]] = []
    for s in series:
        ti, di = s["columns"].index("time"), s["columns"].index("device")
        found.extend((str(row[di]), int(row[ti])) for row in s["values"])
    return found
