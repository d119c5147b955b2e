"""Alert latency: publish of a reading over a limit → its ``alert.firing`` webhook arriving.

Starts its own Mosquitto and InfluxDB 1.x (harness), a webhook receiver in this process
and a real ``lifeline serve`` subprocess (built-in rules, SQLite store) with an inventory
of load devices and probe devices. A probe is one reading of ``lel`` 30 %LEL (over the
gas level-1 limit, 25) from a probe device heard for the first time, so every probe is a
fresh alert; the latency is from just before the publish to the arrival of the webhook
naming that device. Probes go one at a time, a random pause apart, twice:

* ``idle``: nothing else is published;
* ``load``: a separate publisher process sends gateway-style arrays (``--array-size``
  readings a message, values below every limit) at ``--load`` readings/s.

The ceilings, measured in the same run between the probes of each phase: the raw MQTT
round trip (the same publisher client → a plain paho subscriber, QoS 1) and the HTTP
POST of a signed event (the service's notifier) → the same receiver. Ratios compare the
full path with their sum. ``full_path_split`` divides the full path at the moment the
service's notifier starts the POST (``sent_at`` of the body; same machine clock).
``achieved_readings_per_s``: the load readings InfluxDB holds at the end over the
publisher's run time. ``serve_cpu_cores`` is the service's CPU time per second of the
phase, ``loadavg_1m`` the machine's load average at its end (other work competing for
the cores skews the tails).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from alerts.delivery.webhook import HttpNotifier, WebhookEvent
from bench.ingest import PREFIX, publish_all
from devices.model import Device
from devices.registry import write_inventory
from devtools.harness import ManagedService, start_influxdb, start_mosquitto
from devtools.receiver import WebhookReceiver
from lifeline.influxquery import count_values, influxql

log = logging.getLogger(__name__)

SECRET = "bench-latency-secret-0123"
PROBE_RULE = "gas-lel-level1"
PROBE_LEL = 30.0  # level 1 is 25 %LEL, level 2 50 %LEL
PING_TOPIC = "bench-ping"
TARGET_P99_MS = 250.0


class BenchError(Exception):
    """The latency benchmark could not run."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lifeline bench latency``."""
    p.add_argument("--probes", type=int, default=100, help="probes per phase (idle, load)")
    p.add_argument("--load", type=float, default=10_000.0,
                   help="background readings/s in the load phase")
    p.add_argument("--array-size", type=int, default=10, help="readings per load message")
    p.add_argument("--load-devices", type=int, default=1000)
    p.add_argument("--pause", type=float, default=0.1,
                   help="mean pause between probes, seconds (uniform in [0, 2 x pause])")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="a probe without its webhook after this many seconds is lost")
    p.add_argument("--quick", action="store_true",
                   help="5 probes a phase at 1,000 readings/s (smoke test)")
    p.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment of lifeline serve, e.g. "
                        "LIFELINE_INGEST__FLUSH_INTERVAL=0.1 (repeatable)")
    p.add_argument("--keep", action="store_true", help="keep the run directory")


# --------------------------------------------------------------------------- receiver


class Arrival(NamedTuple):
    """One ``alert.firing`` delivery as the receiver saw it."""

    delivery_id: str
    monotonic_ns: int
    wall_ns: int
    sent_ns: int  # ``sent_at`` of the body: when the service's notifier started the POST


class TimedReceiver(WebhookReceiver):
    """The webhook receiver, also noting when each delivery first arrived (monotonic ns)."""

    def __init__(self, secret: str) -> None:
        super().__init__(secret)
        self.arrived: dict[str, tuple[int, int]] = {}  # delivery id: (monotonic, wall) ns
        self.arrival = threading.Condition()

    def _accept(self, headers: dict[str, str], body: bytes) -> int:
        at = (time.monotonic_ns(), time.time_ns())
        status = super()._accept(headers, body)
        if status == 200:
            delivery = {k.lower(): v for k, v in headers.items()}.get("x-lifeline-delivery", "")
            with self.arrival:
                self.arrived.setdefault(delivery, at)
                self.arrival.notify_all()
        return status

    def firing(self, device: str) -> list[Arrival]:
        """The ``alert.firing`` events of ``device`` (probe rule only), as they arrived."""
        out = []
        for e in self.events("alert.firing"):
            alert = e.body.get("alert") or {}
            if alert.get("device") == device and alert.get("rule") == PROBE_RULE:
                mono, wall = self.arrived.get(e.delivery_id, (0, 0))
                sent = datetime.fromisoformat(str(e.body.get("sent_at")))
                out.append(Arrival(e.delivery_id, mono, wall,
                                   int(sent.timestamp() * 1e6) * 1000))
        return out

    def wait_firing(self, device: str, timeout: float) -> list[Arrival]:
        """Wait until ``device`` has an ``alert.firing``; whatever it has by then."""
        deadline = time.monotonic() + timeout
        with self.arrival:
            while not (found := self.firing(device)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.arrival.wait(min(left, 0.05))
        return found


# --------------------------------------------------------------------------- MQTT clients


def _client(port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(1000)
    return client


class MqttSide:
    """One publisher (probes and pings) and one plain subscriber (pings only: this process
    must not spend its time on the load, it timestamps the webhooks too)."""

    def __init__(self, port: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self._arrived: dict[int, int] = {}
        self._cond = threading.Condition()
        self.sub = _client(port, f"bench-lat-sub-{tag}")
        subscribed = threading.Event()
        self.sub.on_message = self._on_message
        self.sub.on_subscribe = lambda *a: subscribed.set()
        self.sub.on_connect = lambda c, *a: c.subscribe(
            f"{PING_TOPIC}/#", 1)
        self.sub.connect("127.0.0.1", port, 30)
        self.sub.loop_start()
        if not subscribed.wait(10):
            raise BenchError("the ceiling subscriber did not subscribe within 10 s")
        self.pub = _client(port, f"bench-lat-pub-{tag}")
        self.pub.connect("127.0.0.1", port, 30)
        self.pub.loop_start()
        self._seq = 0

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.monotonic_ns()
        with self._cond:
            self._arrived[int(msg.payload)] = at
            self._cond.notify_all()

    def ping(self, timeout: float = 10.0) -> float | None:
        """One MQTT round trip (QoS 1) through the broker, in ms; None if lost."""
        self._seq += 1
        seq = self._seq
        started = time.monotonic_ns()
        self.pub.publish(f"{PING_TOPIC}/{seq}", str(seq).encode(), qos=1)
        deadline = time.monotonic() + timeout
        with self._cond:
            while seq not in self._arrived and time.monotonic() < deadline:
                self._cond.wait(0.05)
            at = self._arrived.pop(seq, None)
        return None if at is None else (at - started) / 1e6

    def probe(self, device: str) -> tuple[int, int]:
        """Publish one reading over the limit for ``device``; returns the publish time
        (monotonic and wall clock ns)."""
        wall = time.time_ns()
        body = orjson.dumps({"ts": wall // 1_000_000, "seq": 1, "values": {"lel": PROBE_LEL}})
        started = time.monotonic_ns()
        self.pub.publish(f"{PREFIX}/{device}/telemetry", body, qos=1)
        return started, wall

    def close(self) -> None:
        """Disconnect both clients."""
        for c in (self.pub, self.sub):
            c.disconnect()
            c.loop_stop()


def http_ping(notifier: HttpNotifier, receiver: TimedReceiver) -> float | None:
    """One signed POST to the receiver: from the send to its arrival, in ms."""
    event = WebhookEvent.new("bench.ping", {"ping": True})
    started = time.monotonic_ns()
    notifier.send(event)
    with receiver.arrival:
        at = receiver.arrived.get(event.delivery_id)
    return None if at is None else (at[0] - started) / 1e6


# --------------------------------------------------------------------------- the service


def _env(root: Path, port: int, influx_url: str, db: str, inventory: Path,
         hook_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update({
        "LIFELINE_RUN_DIR": str(root / "serve"),
        "LIFELINE_MQTT__PORT": str(port),
        "LIFELINE_MQTT__CLIENT_ID": f"bench-latency-{db}",
        "LIFELINE_INFLUX__URL": influx_url,
        "LIFELINE_INFLUX__DATABASE": db,
        "LIFELINE_DEVICES__INVENTORY": str(inventory),
        "LIFELINE_WEBHOOK__URL": hook_url,
        "LIFELINE_WEBHOOK__SECRET": SECRET,
        "LIFELINE_API__ENABLED": "false",
    })
    return env


def start_serve(root: Path, env: dict[str, str], timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """``lifeline serve`` as a subprocess; returns once it logged ``serving:``."""
    log_path = root / "serve.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lifeline", "serve"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while b"serving:" not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_serve(proc)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"lifeline serve did not start:\n{tail}")
        time.sleep(0.1)
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_serve(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, wait for a clean exit (kill after 60 s); its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


# --------------------------------------------------------------------------- measuring


def _stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    a = np.asarray(samples)
    return {"n": len(samples), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1),
            "max_ms": round(float(a.max()), 1)}


def run_phase(name: str, probes: int, side: MqttSide, receiver: TimedReceiver,
              notifier: HttpNotifier, rng: random.Random, pause: float,
              timeout: float, records: list[dict[str, Any]]) -> dict[str, Any]:
    """``probes`` probes, each preceded by an MQTT and an HTTP ceiling round trip; each
    probe's times are appended to ``records``."""
    full: list[float] = []
    service: list[float] = []  # publish → the notifier starts the POST
    post: list[float] = []  # ... → the receiver has it
    mqtt_rtt: list[float] = []
    http_rtt: list[float] = []
    lost: list[str] = []
    for i in range(probes):
        if (ms := side.ping()) is not None:
            mqtt_rtt.append(ms)
        if (ms := http_ping(notifier, receiver)) is not None:
            http_rtt.append(ms)
        device = f"probe-{name}-{i:04d}"
        started, wall = side.probe(device)
        found = receiver.wait_firing(device, timeout)
        if found:
            first = found[0]
            full.append((first.monotonic_ns - started) / 1e6)
            service.append((first.sent_ns - wall) / 1e6)
            post.append((first.wall_ns - first.sent_ns) / 1e6)
            records.append({"device": device, "published_ns": wall, "post_ns": first.sent_ns,
                            "arrived_ns": first.wall_ns})
        else:
            lost.append(device)
        time.sleep(rng.uniform(0, 2 * pause))
    return {"probes": probes, "lost": lost, "full_path": _stats(full),
            "full_path_split": {"publish_to_post": _stats(service),
                                "post_to_arrival": _stats(post)},
            "mqtt_round_trip": _stats(mqtt_rtt), "http_post": _stats(http_rtt)}


def _ratios(phase: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in ("p50_ms", "p99_ms"):
        full = phase["full_path"].get(q)
        ceiling = (phase["mqtt_round_trip"].get(q) or 0) + (phase["http_post"].get(q) or 0)
        out[f"{q[:3]}_full_vs_mqtt_plus_http"] = (round(full / ceiling, 1)
                                                  if full is not None and ceiling else None)
    return out


def _inventory(path: Path, load_devices: int, probes: int) -> None:
    devices = [Device(f"gas-{i:05d}", "gas_alarm", grid=f"G{i % 50}", district=f"D{i % 7}",
                      unit="gas-co") for i in range(load_devices)]
    for phase in ("warm", "idle", "load"):
        devices += [Device(f"probe-{phase}-{i:04d}", "gas_alarm", grid=f"P{i % 50}",
                           district="DP", unit="gas-co", interval_s=3600.0)
                    for i in range(probes if phase != "warm" else 3)]
    write_inventory(path, devices)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run both phases; returns the JSON document."""
    if args.quick:
        args.probes, args.load = 5, 1000.0
    root = Path(tempfile.mkdtemp(prefix="lifeline-bench-latency-"))
    mosq: ManagedService | None = None
    influx: ManagedService | None = None
    serve: subprocess.Popen[bytes] | None = None
    side: MqttSide | None = None
    load_procs: list[Any] = []
    receiver = TimedReceiver(SECRET)
    receiver.start()
    notifier = HttpNotifier(receiver.url, SECRET)
    rng = random.Random(1)
    try:
        mosq = start_mosquitto(root)
        influx = start_influxdb(root, database=None)
        port, url = mosq.info.port, influx.info.url
        db = f"latency_{uuid.uuid4().hex[:6]}"
        inventory = root / "inventory.csv"
        _inventory(inventory, args.load_devices, args.probes)
        env = _env(root, port, url, db, inventory, receiver.url)
        env.update(kv.split("=", 1) for kv in args.serve_env)
        serve = start_serve(root, env)
        side = MqttSide(port)
        # warm-up: the first probe also tells that the service is subscribed
        for i in range(3):
            side.probe(f"probe-warm-{i:04d}")
            if not receiver.wait_firing(f"probe-warm-{i:04d}", 60 if i == 0 else args.timeout):
                raise BenchError("warm-up probe got no alert.firing webhook")
        phases: dict[str, Any] = {}
        records: list[dict[str, Any]] = []
        cpu, started = cpu_seconds(serve.pid), time.monotonic()
        phases["idle"] = run_phase("idle", args.probes, side, receiver, notifier, rng,
                                   args.pause, args.timeout, records)
        elapsed = time.monotonic() - started
        phases["idle"].update(seconds=round(elapsed, 1), loadavg_1m=round(os.getloadavg()[0], 1),
                              serve_cpu_cores=round((cpu_seconds(serve.pid) - cpu) / elapsed, 2))

        msg_rate = args.load / args.array_size
        expected_s = 3 + args.probes * (args.pause + 0.5) + 30
        load_started = time.monotonic()
        load_procs = publish_all(port, 1, args.load_devices, int(msg_rate * expected_s),
                                 args.array_size, 0, 1, msg_rate)
        time.sleep(2.0)  # the load reaches its rate
        started = time.monotonic()
        cpu = cpu_seconds(serve.pid)
        phases["load"] = run_phase("load", args.probes, side, receiver, notifier, rng,
                                   args.pause, args.timeout, records)
        elapsed = time.monotonic() - started
        serve_cpu = (cpu_seconds(serve.pid) - cpu) / elapsed
        still_running = all(p.is_alive() for p in load_procs)
        for p in load_procs:
            p.terminate()
            p.join(10)
        load_seconds = time.monotonic() - load_started
        phases["load"].update(offered_readings_per_s=round(args.load),
                              load_ran_throughout=still_running, seconds=round(elapsed, 1),
                              loadavg_1m=round(os.getloadavg()[0], 1),
                              serve_cpu_cores=round(serve_cpu, 2))
        time.sleep(1.0)  # late duplicates, if any, would arrive now
        (root / "probes.json").write_bytes(orjson.dumps(records))  # with --keep: to analyse
        code = stop_serve(serve)
        serve = None
        per_probe = {f"probe-{ph}-{i:04d}": len(receiver.firing(f"probe-{ph}-{i:04d}"))
                     for ph in ("idle", "load") for i in range(args.probes)}
        stored = count_values(url, db, ["gas_alarm"])
        # the load the service took: load readings in InfluxDB over the publisher's run
        rows = influxql(url, db, "SELECT count(lel) FROM gas_alarm WHERE device =~ /^gas-/")
        achieved = (rows[0]["values"][0][1] if rows else 0) / load_seconds
        phases["load"]["achieved_readings_per_s"] = round(achieved)
        for ph in phases.values():
            ph["ratios"] = _ratios(ph)
        load_p99 = phases["load"]["full_path"].get("p99_ms")
        return {
            "benchmark": "latency", "cpus": os.cpu_count(),
            "settings": {"probes_per_phase": args.probes, "load_readings_per_s": args.load,
                         "array_size": args.array_size, "load_devices": args.load_devices,
                         "probe_rule": PROBE_RULE, "mqtt_qos": 1,
                         "serve_env": args.serve_env},
            "phases": phases,
            "alert_firing_per_probe": {"exactly_one": sum(n == 1 for n in per_probe.values()),
                                       "none": sum(n == 0 for n in per_probe.values()),
                                       "more": sum(n > 1 for n in per_probe.values())},
            "webhook_duplicates": receiver.log.duplicates,
            "bad_signatures": receiver.log.bad_signatures,
            "readings_stored": stored,
            "serve_exit_code": code,
            "targets_met": {
                f"load_p99<={TARGET_P99_MS:g}ms": load_p99 is not None
                and load_p99 <= TARGET_P99_MS,
                "every_probe_one_alert_firing": all(n == 1 for n in per_probe.values()),
                "load_achieved>=95%": achieved >= 0.95 * args.load,
            },
        }
    finally:
        for p in load_procs:
            if p.is_alive():
                p.terminate()
        if side is not None:
            side.close()
        if serve is not None:
            stop_serve(serve)
        notifier.close()
        receiver.stop()
        if mosq is not None:
            mosq.stop()
        if influx is not None:
            influx.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log.warning("run directory kept: %s", root)
