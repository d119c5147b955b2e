"""Failover under load: two ``lifeline serve`` nodes, the leader faulted again and again.

``lifeline bench failover [--takeovers N] [--rate R] [--devices N] [--window S]
[--freeze S] [--keep]`` starts Mosquitto and InfluxDB (harness), a fresh PostgreSQL
database on 127.0.0.1:5432, the dispatch simulator (:mod:`simulators.dispatch`: it
receives the webhooks and sends its signed callbacks through a small TCP balancer to
the API of both nodes) and two ``lifeline serve`` processes ``a`` and ``b`` standing for
two machines: HA on, one MQTT client id, own run directory and API port, each reaching
PostgreSQL through its own :class:`~bench.soak.TcpProxy`. The soak publisher
(:mod:`bench.soak`: gateway arrays, QoS 1, "published" = PUBACKed) sends ``--rate``
readings/s; one gas alarm drifts up through the alert limit early in the run and stays
above it (its alert must fire exactly once over every takeover), and brief excursions
of other alarms keep alerts, cases and webhooks coming.

Faults, in turn (kill, freeze, cutoff, kill, …), each on the current leader:

- ``kill``: SIGKILL of the node's processes and its run directory deleted (machine
  lost); it comes back with a fresh run directory;
- ``freeze``: SIGSTOP for ``--freeze`` s, then SIGCONT: it must step down by itself
  (exit code 75), not fight;
- ``cutoff``: its proxy to PostgreSQL closes and refuses connections (the broker is
  still reachable): it must step down (exit code 75); the proxy lets it in again.

After each fault the node is started again as a standby (as systemd's
``Restart=on-failure`` would). Per takeover: fault → the other node reports ``leader``
on ``GET /readyz``, and fault → the first reading stored by the new leader (the
InfluxDB count grows again); the stored-readings rate in 1 s windows around it; that
the readings acknowledged before the fault were all stored. At the end: readings
published = stored, the drifting alarm fired exactly once (outbox, webhooks received,
``lifeline_alert``), every excursion that ended fired once and resolved once, every
webhook delivery id arrived (duplicates counted apart: at least once is the contract),
the events of each case (order key) arrived in outbox order, every case history is one
chain (each line starts where the previous ended) and each callback key applied its
transition once, no two nodes reported ``leader`` at the same moment, each new leader
kept its role (the old one did not fight back) and each takeover raised one
``service:ha_takeover`` alert. ``ok`` is false with the failing checks named.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.soak import (
    RULE,
    RULE_ID,
    SECRET,
    Plan,
    PublishResult,
    ServeProcess,
    TcpProxy,
    _database,
    _drop_pg,
    _influx_alert_counts,
    _publisher,
    _rows,
    _wait,
)
from devices.model import Device
from devices.registry import write_inventory
from devtools.harness import ManagedService, free_port, start_influxdb, start_mosquitto
from lifeline.auth import new_token, token_digest
from lifeline.influxquery import count_values
from simulators.dispatch import DispatchPlan, DispatchSimulator

log = logging.getLogger(__name__)

FAULTS = ("kill", "freeze", "cutoff")
EX_TEMPFAIL = 75  # a node that lost its leadership exits with this code
CLIENT_ID = "failover-serve"
TAKEOVER_RULE = "service:ha_takeover"
EXCURSION_FROM_S = 14.0  # offset of the first excursion
EXCURSION_EVERY_S = 8.0
EXCURSION_S = 4.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lifeline bench failover``."""
    p.add_argument("--takeovers", type=_at_least_5, default=6,
                   help="faults injected on the leader, in turn kill, freeze, cutoff (>= 5)")
    p.add_argument("--rate", type=float, default=2_000.0, help="readings/s offered")
    p.add_argument("--devices", type=int, default=400)
    p.add_argument("--window", type=float, default=2.0,
                   help="seconds of readings per gateway array message")
    p.add_argument("--freeze", type=float, default=30.0, help="seconds a leader is SIGSTOPped")
    p.add_argument("--keep", action="store_true", help="keep the run directory")


def _at_least_5(text: str) -> int:
    n = int(text)
    if n < 5:
        raise argparse.ArgumentTypeError("at least 5 takeovers (p50 and max need a few)")
    return n


@dataclass(frozen=True, slots=True)
class Options:
    """One failover run: the faults in order and the load."""

    faults: Sequence[str]
    rate: float = 2_000.0
    devices: int = 400
    window_s: float = 2.0
    freeze_s: float = 30.0
    # load before the first fault; the drifting alarm crosses its limit 1.5 s before its
    # end, so the first takeover likely finds a saved rule state older than the alert
    # (the new leader must align it with the open alerts, not fire again)
    warmup_s: float = 12.0
    settle_s: float = 2.0  # after a restarted node is standby, before the next fault
    # [ha] timings of the nodes (None: the defaults, which the benchmark measures; the
    # test runs a shorter lease: the invariants do not depend on it)
    lease: str | None = None
    renew_interval: str | None = None
    poll_interval: str | None = None
    dispatch: DispatchPlan = field(default_factory=lambda: DispatchPlan(
        accept_after_s=1.0, handle_after_s=3.0, return_rate=0.2, late_rate=0.1,
        late_extra_s=3.0, seed=18))

    def __post_init__(self) -> None:
        unknown = [f for f in self.faults if f not in FAULTS]
        if unknown or not self.faults:
            raise ValueError(f"faults must be some of {FAULTS}, got {list(self.faults)}")

    def estimated_s(self) -> float:
        """Rough length of the faulted part (plans the excursions)."""
        per = {"kill": 25.0, "freeze": self.freeze_s + 20.0, "cutoff": 30.0}
        return self.warmup_s + sum(per[f] for f in self.faults)


# --------------------------------------------------------------------------- nodes


class Node:
    """One machine: a ``lifeline serve`` process (restartable), its own run directories,
    API port and proxy to PostgreSQL."""

    def __init__(self, name: str, machine: Path, env: dict[str, str], token: str,
                 pg_target: tuple[str, int]) -> None:
        self.name = name
        self.machine = machine
        self.api_port = free_port()
        self.proxy = TcpProxy(pg_target)
        self.runs = 0
        (machine / "logs").mkdir(parents=True, exist_ok=True)
        node_env = {**env,
                    "LIFELINE_DATABASE__URL": env["LIFELINE_DATABASE__URL"].replace(
                        f"{pg_target[0]}:{pg_target[1]}", f"127.0.0.1:{self.proxy.port}"),
                    "LIFELINE_API__PORT": str(self.api_port),
                    "LIFELINE_HA__NODE_ID": name,
                    "LIFELINE_HA__ADVERTISE_URL": self.url}
        self.serve = ServeProcess(node_env, machine / "logs", self.api_port, token)
        self._http = httpx.Client(timeout=0.5)

    @property
    def url(self) -> str:
        """The node's API."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def run_dir(self) -> Path:
        """The current run directory."""
        return self.machine / f"run{self.runs}"

    def start(self, fresh: bool) -> float:
        """Start (in a new run directory when ``fresh``) and wait until the API answers;
        returns the seconds it took."""
        if fresh or self.runs == 0:
            self.runs += 1
        return self.serve.start({"LIFELINE_RUN_DIR": str(self.run_dir)}, until=self.answers)

    def answers(self) -> bool:
        """The API answers ``/healthz``."""
        try:
            return self._http.get(f"{self.url}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def role(self, timeout: float = 0.5) -> str | None:
        """The role ``GET /readyz`` reports (None: no answer)."""
        try:
            r = self._http.get(f"{self.url}/readyz", timeout=timeout)
            doc = r.json()
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("role") is None:
            return "unknown"
        if doc.get("node") not in (None, self.name):  # answered by another node's API
            return f"node {doc.get('node')!r}"
        return str(doc["role"])

    @property
    def alive(self) -> bool:
        """The process is running (or stopped by a signal)."""
        proc = self.serve.proc
        return proc is not None and proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every process of the node (its process group: the machine)."""
        proc = self.serve.proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None when still running after ``timeout``."""
        proc = self.serve.proc
        assert proc is not None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int:
        """SIGTERM and wait; the exit code."""
        if self.serve.proc is not None and self.serve.proc.poll() is None:
            self.signal(signal.SIGCONT)  # in case it was left frozen
        return self.serve.stop()

    def close(self) -> None:
        """Kill what is left and stop the proxy."""
        proc = self.serve.proc
        if proc is not None and proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(10)
        self.proxy.close()
        self._http.close()


class Dispatch(DispatchSimulator):
    """The dispatch simulator, with a pause of its units (webhooks still received), that
    keeps retrying a callback for a few rounds of its five attempts (about 8 s each: a
    takeover takes longer; a real dispatch system retries for longer still). Every attempt
    carries the same idempotency key."""

    ROUNDS = 4
    retried_rounds = 0

    def _callback(self, case_id: int, action: str, key: str) -> None:
        # one scheduler thread sends the callbacks: the failure count is ours to read
        for round_ in range(self.ROUNDS):
            failed = self.stats.callbacks_failed
            super()._callback(case_id, action, key)
            with self._lock:
                if self.stats.callbacks_failed == failed or self._stop:
                    return
                if round_ < self.ROUNDS - 1:
                    self.stats.callbacks_failed -= 1  # not given up yet
                    self.retried_rounds += 1

    def pause(self) -> None:
        """Send no more callbacks (those scheduled are dropped)."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self._threads[1].join(10)


# --------------------------------------------------------------------------- observing


class Observer:
    """Background sampling: each node's role (``/readyz``, every 0.1 s) and the number of
    readings in InfluxDB (every 0.25 s)."""

    def __init__(self, nodes: list[Node], influx_url: str, database: str) -> None:
        self.nodes = nodes
        self.influx_url = influx_url
        self.database = database
        self.lock = threading.Lock()
        self.roles: list[tuple[float, str, str | None]] = []  # (t, node, role)
        self.stored: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._roles, args=(n,), daemon=True,
                                          name=f"observe-{n.name}") for n in nodes]
        self._threads.append(threading.Thread(target=self._count, daemon=True,
                                              name="observe-stored"))

    def start(self) -> None:
        """Start sampling."""
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        for t in self._threads:
            t.join(5)

    def _roles(self, node: Node) -> None:
        while not self._stop.wait(0.1):
            t = time.monotonic()
            role = node.role(timeout=0.3) if node.alive else None
            with self.lock:
                self.roles.append((t, node.name, role))

    def _count(self) -> None:
        while not self._stop.wait(0.25):
            t = time.monotonic()
            try:
                n = count_values(self.influx_url, self.database, ["gas_alarm"])
            except (httpx.HTTPError, ValueError) as exc:
                log.debug("counting: %s", exc)
                continue
            with self.lock:
                self.stored.append((t, n))

    def latest_roles(self) -> dict[str, str | None]:
        """Each node's last sampled role."""
        out: dict[str, str | None] = {n.name: None for n in self.nodes}
        with self.lock:
            for _, name, role in self.roles[-20:]:
                out[name] = role
        return out

    def wait_role(self, node: str, role: str, after: float, timeout: float) -> float | None:
        """The time of the first sample after ``after`` in which ``node`` reported
        ``role`` (waits up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                hit = next((t for t, n, r in self.roles if t >= after and n == node
                            and r == role), None)
            if hit is not None or time.monotonic() > deadline:
                return hit
            time.sleep(0.05)

    def wait_increase(self, after: float, timeout: float) -> float | None:
        """The time of the first count sample taken after ``after`` that is larger than the
        last sample taken before it."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                before = [n for t, n in self.stored if t < after]
                base = before[-1] if before else None
                hit = next((t for t, n in self.stored
                            if t >= after and base is not None and n > base), None)
            if hit is not None or time.monotonic() > deadline:
                return hit
            time.sleep(0.05)

    def stored_now(self) -> int:
        """The last count sampled."""
        with self.lock:
            return self.stored[-1][1] if self.stored else 0

    def two_leaders(self) -> int:
        """Moments when both nodes reported ``leader`` in samples less than 0.3 s apart."""
        with self.lock:
            samples = list(self.roles)
        last: dict[str, tuple[float, str | None]] = {}
        seen = 0
        for t, name, role in samples:
            last[name] = (t, role)
            leaders = [n for n, (tt, r) in last.items() if r == "leader" and t - tt <= 0.3]
            if len(leaders) > 1:
                seen += 1
        return seen

    def rate_windows(self, start: float, end: float) -> list[float]:
        """Readings stored per second in consecutive 1 s windows from ``start`` to ``end``
        (counts interpolated at the window edges)."""
        with self.lock:
            pts = [(t, n) for t, n in self.stored]
        if len(pts) < 2:
            return []

        def at(x: float) -> float:
            for (t0, n0), (t1, n1) in itertools.pairwise(pts):
                if t0 <= x <= t1:
                    return n0 + (n1 - n0) * (x - t0) / max(t1 - t0, 1e-9)
            return float(pts[0][1] if x < pts[0][0] else pts[-1][1])

        start, end = max(start, pts[0][0]), min(end, pts[-1][0])
        out = []
        x = start
        while x + 1.0 <= end:
            out.append(at(x + 1.0) - at(x))
            x += 1.0
        return out


# --------------------------------------------------------------------------- the run


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    return {"p50": round(statistics.median(values), 2), "max": round(max(values), 2)}


def create_influx_database(url: str, database: str) -> None:
    """``CREATE DATABASE`` on an InfluxDB 1.x server."""
    httpx.post(f"{url}/query", params={"q": f'CREATE DATABASE "{database}"'},
               timeout=10).raise_for_status()


def drop_influx_database(url: str, database: str) -> None:
    """``DROP DATABASE`` on an InfluxDB 1.x server."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{url}/query", params={"q": f'DROP DATABASE "{database}"'}, timeout=30)


def run_failover(opts: Options, root: Path, mqtt_port: int, influx_url: str,
                 influx_db: str) -> dict[str, Any]:
    """Run the two nodes under load through ``opts.faults``; the JSON document.

    Mosquitto (at ``mqtt_port``) and InfluxDB (``influx_db`` exists) are the caller's; a
    PostgreSQL database is created here and dropped at the end."""
    nodes: list[Node] = []
    sim: Dispatch | None = None
    front: TcpProxy | None = None
    observer: Observer | None = None
    pub: Any = None
    stop_pub: Any = None
    pg_name = ""
    try:
        _, direct_url = _database("postgresql", root, prefix="lifeline_failover")
        pg_name = direct_url.rsplit("/", 1)[1]
        devices = [f"gas-{i:05d}" for i in range(opts.devices)]
        drift_device = devices[0]
        est = opts.estimated_s()
        n_exc = max(1, min(len(devices) - 1,
                           int((est - EXCURSION_FROM_S) // EXCURSION_EVERY_S)))
        excursions = {devices[1 + i]: (EXCURSION_FROM_S + i * EXCURSION_EVERY_S,
                                       EXCURSION_FROM_S + i * EXCURSION_EVERY_S + EXCURSION_S)
                      for i in range(n_exc)}
        interval_s = max(20.0, 4 * opts.window_s)  # offline after 3 intervals
        inventory = [Device(d, "gas_alarm", grid=f"AL{i:03d}" if i <= n_exc else f"G{i % 50}",
                            district=f"D{i % 7}", unit="燃气公司", interval_s=interval_s)
                     for i, d in enumerate(devices)]
        token = new_token()
        sim = Dispatch(SECRET, "http://127.0.0.1:9", opts.dispatch)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
        env.update({
            "LIFELINE_MQTT__PORT": str(mqtt_port),
            "LIFELINE_MQTT__CLIENT_ID": CLIENT_ID,
            "LIFELINE_INFLUX__URL": influx_url,
            "LIFELINE_INFLUX__DATABASE": influx_db,
            "LIFELINE_INFLUX__RETRIES": "2",
            "LIFELINE_INFLUX__TIMEOUT": "5",
            "LIFELINE_DATABASE__URL": direct_url,
            "LIFELINE_DEVICES__CHECK_INTERVAL": "1s",
            "LIFELINE_WEBHOOK__URL": sim.url,
            "LIFELINE_WEBHOOK__SECRET": SECRET,
            "LIFELINE_WEBHOOK__TIMEOUT": "5",
            "LIFELINE_WEBHOOK__BASE_DELAY": "0.5",
            "LIFELINE_WEBHOOK__MAX_DELAY": "5",
            "LIFELINE_ALERTS__RESOLVE_DELAY": "2s",
            "LIFELINE_ALERTS__TICK_INTERVAL": "0.5",
            "LIFELINE_CASES__VERIFY_AFTER": "5s",
            "LIFELINE_API__TOKENS": orjson.dumps([{"name": "failover", "role": "viewer",
                                                   "sha256": token_digest(token)}]).decode(),
            "LIFELINE_HA__ENABLED": "true",
        })
        for key, value in (("LEASE", opts.lease), ("RENEW_INTERVAL", opts.renew_interval),
                           ("POLL_INTERVAL", opts.poll_interval)):
            if value is not None:
                env[f"LIFELINE_HA__{key}"] = value
        for name in ("a", "b"):
            machine = root / f"node-{name}"
            etc = machine / "etc"  # configuration: not in the run directory
            etc.mkdir(parents=True)
            write_inventory(etc / "inventory.csv", inventory)
            (etc / "rules.toml").write_text(RULE)
            node_env = {**env, "LIFELINE_DEVICES__INVENTORY": str(etc / "inventory.csv"),
                        "LIFELINE_RULES__PATHS": orjson.dumps([str(etc / "rules.toml")]).decode()}
            nodes.append(Node(name, machine, node_env, token, ("127.0.0.1", 5432)))
        a, b = nodes
        # the dispatch system reaches the API through a balancer in front of both nodes
        front = TcpProxy(("127.0.0.1", a.api_port), ("127.0.0.1", b.api_port))
        sim.api_url = f"http://127.0.0.1:{front.port}"
        sim.start()
        observer = Observer(nodes, influx_url, influx_db)
        observer.start()
        startup_s = {"a": round(a.start(fresh=True), 1)}
        if observer.wait_role("a", "leader", 0.0, 60) is None:
            raise RuntimeError(f"node a did not become leader: {a.role()}")
        startup_s["b"] = round(b.start(fresh=True), 1)
        if observer.wait_role("b", "standby", 0.0, 60) is None:
            raise RuntimeError(f"node b did not become standby: {b.role()}")

        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        progress = ctx.Value("q", 0)
        stop_pub = ctx.Event()
        start_at = time.time() + 3.0
        plan = Plan(mqtt_port, devices, opts.rate, opts.window_s, est, start_at, excursions,
                    {}, drift={drift_device: opts.warmup_s - 1.5})
        pub = ctx.Process(target=_publisher, args=(plan, out, progress, stop_pub), daemon=True)
        pub.start()
        time.sleep(max(0.0, start_at - time.time()))
        t0 = time.monotonic()
        time.sleep(opts.warmup_s)
        drift_fired = _wait(lambda: _count(direct_url, _firing_query(drift_device)) >= 1, 30)

        takeovers: list[dict[str, Any]] = []
        aborted = ""
        for kind in opts.faults:
            try:
                takeovers.append(_inject(kind, nodes, observer, progress, opts, t0))
            except RuntimeError as exc:  # e.g. a node gone by itself: report, then verify
                aborted = f"{kind}: {exc}"
                log.error("fault %s aborted: %s", kind, exc)
                break

        # the end: load stops, everything acknowledged must be stored, webhooks settle
        stop_at = time.monotonic()
        stop_pub.set()
        pub.join(300)
        published: PublishResult = out.get(timeout=10)
        stored_all = _wait_all_stored(observer, influx_url, influx_db, published.readings_acked)
        sim.pause()
        drained = _wait(lambda: _count(direct_url, "SELECT count(*) FROM webhook_outbox "
                                       "WHERE target = '' AND status = 'pending'") == 0, 60)
        roles_at_end = observer.latest_roles()
        leader = next((n for n in nodes if roles_at_end.get(n.name) == "leader"), None)
        exit_codes = {n.name: n.stop() for n in nodes if n is not leader}
        if leader is not None:
            exit_codes[leader.name] = leader.stop()
        observer.stop()
        result = _verify(direct_url, influx_url, influx_db, published, sim, drift_device,
                         excursions, published.stopped_at - start_at - 15.0)
        checks: dict[str, bool] = result.pop("checks")
        take_s = [t["takeover_s"] for t in takeovers if t["takeover_s"] is not None]
        again_s = [t["stored_again_s"] for t in takeovers if t["stored_again_s"] is not None]
        checks.update({
            "all_faults_injected": not aborted,
            # every fault is a takeover (the lease expired, nobody released it): one
            # service:ha_takeover alert each (device "<node>/token-<token>")
            "one_takeover_alert_per_takeover":
                result["alerts"]["takeover_alert_firings"] == len(takeovers),
            "drift_alarm_fired_before_first_fault": drift_fired,
            "every_fault_taken_over": len(take_s) == len(takeovers),
            "readings_stored_again_after_every_takeover": len(again_s) == len(takeovers),
            "faulted_node_exit_codes": all(t["exit_code"] == t["expected_exit_code"]
                                           for t in takeovers),
            "restarted_as_standby": all(t["restarted_as"] == "standby" for t in takeovers),
            "new_leader_kept_the_role": all(t.get("new_leader_other_role_samples") == 0
                                            for t in takeovers),
            "acked_before_fault_stored": all(t["acked_before_fault_stored"] for t in takeovers),
            "never_two_leaders": observer.two_leaders() == 0,
            "all_stored_at_end": stored_all,
            "outbox_drained": drained,
            "clean_stop_exit_0": all(c == 0 for c in exit_codes.values()),
        })
        windows = [w for t in takeovers
                   for w in observer.rate_windows(t0 + t["at_s"] - 5.0,
                                                  t0 + t["at_s"] + (t["stored_again_s"] or 30.0)
                                                  + 10.0)]
        whole = observer.rate_windows(t0, stop_at)
        failing = [k for k, v in checks.items() if not v]
        return {
            "benchmark": "failover", "ok": not failing, "failing_checks": failing,
            "cpus": os.cpu_count(),
            "load": {"devices": opts.devices, "offered_readings_per_s": opts.rate,
                     "readings_per_message": max(1, round(opts.rate * opts.window_s
                                                          / opts.devices)),
                     "seconds": round(published.seconds, 1),
                     "achieved_readings_per_s": round(published.readings_sent
                                                      / max(published.seconds, 1e-9)),
                     "publisher_max_lag_s": round(published.max_lag_s, 2),
                     "publisher_held_s": round(published.held_s, 1),
                     "freeze_s": opts.freeze_s, "startup_s": startup_s},
            "takeovers": takeovers,
            "aborted": aborted or None,
            "takeover_s": _stats(take_s),
            "stored_again_s": _stats(again_s),
            "readings_per_s": {
                "sustained": round(sum(whole) / len(whole)) if whole else None,
                "min_1s_around_takeovers": round(min(windows)) if windows else None,
                "max_1s_around_takeovers": round(max(windows)) if windows else None},
            "two_leader_samples": observer.two_leaders(),
            # elections where the saved rule state was older than the open alerts
            "rule_state_alignments": _log_count(nodes, b"rule state aligned with the open alerts"),
            "exit_codes_at_end": exit_codes,
            **result,
            "dispatch": {"requests": sim.stats.requests, "duplicates": sim.stats.duplicates,
                         "bad_signatures": sim.stats.bad_signatures,
                         "callbacks_ok": sim.stats.callbacks_ok,
                         "callbacks_refused": sim.stats.callbacks_refused,
                         "callbacks_failed": sim.stats.callbacks_failed,
                         "callbacks_retried_rounds": sim.retried_rounds,
                         "accepted": sim.stats.accepted, "handled": sim.stats.handled,
                         "returned": sim.stats.returned},
            "checks": checks,
        }
    finally:
        if stop_pub is not None:
            stop_pub.set()
        if pub is not None and pub.is_alive():
            pub.terminate()
        if observer is not None:
            observer.stop()
        for n in nodes:
            n.close()
        if sim is not None:
            sim.stop()
        if front is not None:
            front.close()
        if pg_name:
            _drop_pg(pg_name)


def _inject(kind: str, nodes: list[Node], observer: Observer, progress: Any, opts: Options,
            t0: float) -> dict[str, Any]:
    """One fault on the current leader, its takeover, the node back as a standby."""
    roles: dict[str, str | None] = {}

    def settled() -> bool:
        roles.update(observer.latest_roles())
        return sorted(str(r) for r in roles.values()) == ["leader", "standby"]

    if not _wait(settled, 60):
        codes = {n.name: n.serve.proc.poll() if n.serve.proc else None for n in nodes}
        raise RuntimeError(f"no leader and standby before the {kind} fault: roles {roles}, "
                           f"exit codes {codes} (None: running)")
    leader = next(n for n in nodes if roles[n.name] == "leader")
    other = next(n for n in nodes if n is not leader)
    acked = int(progress.value)
    began = time.monotonic()
    entry: dict[str, Any] = {"fault": kind, "node": leader.name, "new_leader": other.name,
                             "at_s": round(began - t0, 1)}
    log.warning("fault %s on leader %s at %.1f s", kind, leader.name, began - t0)
    code: int | None
    if kind == "kill":
        leader.signal(signal.SIGKILL)
        code = leader.wait_exit(30)
        shutil.rmtree(leader.run_dir, ignore_errors=True)
        entry["expected_exit_code"] = -signal.SIGKILL
    elif kind == "freeze":
        leader.signal(signal.SIGSTOP)
        time.sleep(opts.freeze_s)
        resumed = time.monotonic()
        leader.signal(signal.SIGCONT)
        code = leader.wait_exit(60)
        entry["exit_after_resume_s"] = round(time.monotonic() - resumed, 2)
        entry["expected_exit_code"] = EX_TEMPFAIL
    else:
        leader.proxy.block()
        code = leader.wait_exit(90)
        entry["exit_after_cutoff_s"] = round(time.monotonic() - began, 2)
        leader.proxy.unblock()
        entry["refused_connections"] = leader.proxy.refused
        entry["expected_exit_code"] = EX_TEMPFAIL
    if code is None:  # it did not step down: stop it so the run can go on
        leader.signal(signal.SIGCONT)
        leader.signal(signal.SIGKILL)
        leader.wait_exit(30)
    entry["exit_code"] = code
    took = observer.wait_role(other.name, "leader", began, 60)
    entry["takeover_s"] = round(took - began, 2) if took is not None else None
    again = observer.wait_increase(took, 60) if took is not None else None
    entry["stored_again_s"] = round(again - began, 2) if again is not None else None
    restart = time.monotonic()
    entry["restart_s"] = round(leader.start(fresh=kind == "kill"), 1)
    standby = observer.wait_role(leader.name, "standby", restart, 30)
    entry["restarted_as"] = "standby" if standby is not None else observer.latest_roles().get(
        leader.name)
    entry["acked_before_fault"] = acked
    entry["acked_before_fault_stored"] = _wait(lambda: observer.stored_now() >= acked, 120)
    entry["caught_up_s"] = round(time.monotonic() - began, 1)
    time.sleep(opts.settle_s)
    if took is not None:  # the new leader kept its role (a resumed old one did not fight)
        with observer.lock:
            entry["new_leader_other_role_samples"] = sum(
                1 for t, n, r in observer.roles
                if t > took and n == other.name and r not in ("leader", None))
    log.warning("fault %s: %s", kind, entry)
    return entry


def _wait_all_stored(observer: Observer, url: str, database: str, acked: int) -> bool:
    """Until InfluxDB holds ``acked`` readings, as long as the count still grows."""
    last, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 60:
        try:
            stored = count_values(url, database, ["gas_alarm"])
        except (httpx.HTTPError, ValueError):
            stored = last
        if stored >= acked:
            return True
        if stored > last:
            last, still_since = stored, time.monotonic()
        time.sleep(1.0)
    return False


def _log_count(nodes: list[Node], needle: bytes) -> int:
    """Lines of the nodes' logs containing ``needle``."""
    return sum(f.read_bytes().count(needle) for n in nodes
               for f in (n.machine / "logs").glob("*.log"))


def _count(url: str, query: str) -> int:
    return int(_rows(url, query)[0][0])


def _firing_query(device: str) -> str:
    return (f"SELECT count(*) FROM alerts WHERE rule_id = '{RULE_ID}' "
            f"AND device_id = '{device}' AND state = 'firing'")


# --------------------------------------------------------------------------- checks


def _verify(db_url: str, influx_url: str, influx_db: str, pub: PublishResult,
            sim: DispatchSimulator, drift: str, excursions: dict[str, tuple[float, float]],
            complete_before: float) -> dict[str, Any]:
    """Figures and checks over the stores, once every node has stopped."""
    stored = count_values(influx_url, influx_db, ["gas_alarm"])
    dead = _count(db_url, "SELECT count(*) FROM dead_letters")
    outbox = _rows(db_url, "SELECT id, delivery_id, event, status, payload, order_key "
                   "FROM webhook_outbox WHERE target = '' ORDER BY id")
    by_event: dict[str, int] = {}
    alert_events: dict[tuple[str, str, str], int] = {}  # (rule, device, event) -> n
    for _, _, ev, _, payload, _ in outbox:
        by_event[ev] = by_event.get(ev, 0) + 1
        if ev.startswith("alert."):
            alert = orjson.loads(payload).get("alert") or {}
            key = (str(alert.get("rule", "")), str(alert.get("device", "")), ev)
            alert_events[key] = alert_events.get(key, 0) + 1
    received = sim.events()
    rx_ids = [r.delivery_id for r in received]
    rx_drift_firing = sum(1 for r in received if r.event == "alert.firing"
                          and (r.body.get("alert") or {}).get("device") == drift
                          and (r.body.get("alert") or {}).get("rule") == RULE_ID)
    influx_alerts = _influx_alert_counts(influx_url, RULE_ID, influx_db)
    drift_rows = _rows(db_url, f"SELECT state FROM alerts WHERE rule_id = '{RULE_ID}' "
                       f"AND device_id = '{drift}'")
    drift_ok = (alert_events.get((RULE_ID, drift, "alert.firing"), 0) == 1
                and alert_events.get((RULE_ID, drift, "alert.resolved"), 0) == 0
                and rx_drift_firing == 1 and influx_alerts.get((drift, "firing"), 0) == 1
                and [r[0] for r in drift_rows] == ["firing"])
    complete = [d for d, (_, end) in excursions.items() if end < complete_before]
    exc_once = [d for d in complete
                if alert_events.get((RULE_ID, d, "alert.firing"), 0) == 1
                and alert_events.get((RULE_ID, d, "alert.resolved"), 0) == 1
                and influx_alerts.get((d, "firing"), 0) == 1
                and influx_alerts.get((d, "resolved"), 0) == 1]
    exc_never_twice = all(alert_events.get((RULE_ID, d, ev), 0) <= 1
                          for d in excursions for ev in ("alert.firing", "alert.resolved"))
    # deliveries: every outbox id arrived, nothing unknown; per order key in outbox order
    outbox_ids = {r[1] for r in outbox}
    delivered_ids = {r[1] for r in outbox if r[3] == "delivered"}
    undelivered = sorted(outbox_ids - set(rx_ids))
    unknown = sorted(set(rx_ids) - outbox_ids)
    key_of = {r[1]: r[5] for r in outbox}
    rank = {r[1]: r[0] for r in outbox}
    arrivals: dict[str, list[int]] = {}
    for d in rx_ids:
        if key_of.get(d):
            arrivals.setdefault(key_of[d], []).append(rank[d])
    out_of_order = sorted(k for k, ids in arrivals.items() if ids != sorted(ids))
    # cases: each history one chain; each callback key applied once
    history = _rows(db_url, "SELECT case_id, actor, action, from_state, to_state "
                    "FROM case_history ORDER BY id")
    broken: set[int] = set()
    state: dict[int, str] = {}
    applied: dict[tuple[int, str], int] = {}
    for case_id, actor, action, frm, to in history:
        if state.get(case_id, "") != frm:
            broken.add(case_id)
        state[case_id] = to
        if str(actor).endswith("sim-unit"):  # "<credential>:sim-unit"
            applied[(case_id, action)] = applied.get((case_id, action), 0) + 1
    keys: dict[tuple[int, str], int] = {}
    for key, case_id in _rows(db_url, "SELECT key, case_id FROM case_callback_keys "
                              "WHERE status = 200"):
        action = str(key).rsplit("-", 1)[-1]
        keys[(int(case_id), action)] = keys.get((int(case_id), action), 0) + 1
    twice = sorted(f"{c}:{a}" for (c, a), n in applied.items() if n > keys.get((c, a), 0))
    takeover_alerts = sum(n for (rule, _, ev), n in alert_events.items()
                          if rule == TAKEOVER_RULE and ev == "alert.firing")
    offline = _count(db_url, "SELECT count(*) FROM device_status_changes "
                     "WHERE change = 'offline'")
    figures = {
        "readings": {"sent": pub.readings_sent, "published_acked": pub.readings_acked,
                     "stored": stored, "lost": pub.readings_acked - stored,
                     "unacked_by_broker_at_end": pub.unacked_at_end, "dead_lettered": dead},
        "alerts": {"drift_device": drift,
                   "drift_firing_events": alert_events.get((RULE_ID, drift, "alert.firing"), 0),
                   "drift_firing_received": rx_drift_firing,
                   "drift_firing_in_influx": influx_alerts.get((drift, "firing"), 0),
                   "drift_alert_rows": [r[0] for r in drift_rows],
                   "excursions": len(excursions), "excursions_complete": len(complete),
                   "excursions_one_firing_one_resolved": len(exc_once),
                   "takeover_alert_firings": takeover_alerts,
                   "offline_changes": offline},
        "webhooks": {"outbox_events": len(outbox), "by_event": dict(sorted(by_event.items())),
                     "delivered": len(delivered_ids), "received_unique": len(set(rx_ids)),
                     "duplicates_received": sim.stats.duplicates,
                     "undelivered": undelivered[:20], "unknown_ids_received": unknown[:20],
                     "bad_signatures": sim.stats.bad_signatures,
                     "order_keys": len(arrivals), "order_keys_out_of_order": out_of_order[:20]},
        "cases": {"cases": len(state), "history_lines": len(history),
                  "callback_transitions": sum(applied.values()),
                  "broken_history_chains": sorted(broken)[:20],
                  "transitions_applied_twice": twice[:20]},
    }
    checks = {
        "readings_zero_loss": stored == pub.readings_acked and pub.unacked_at_end == 0,
        "no_dead_letters": dead == 0,
        "drift_alarm_fired_exactly_once": drift_ok,
        "excursions_fired_and_resolved_once": len(exc_once) == len(complete) and exc_never_twice,
        "every_delivery_received": not undelivered and not unknown and bool(outbox)
        and sim.stats.bad_signatures == 0,
        "case_events_in_order": not out_of_order and bool(arrivals),
        "case_history_one_chain": not broken and bool(history),
        "no_transition_applied_twice": not twice and sum(applied.values()) > 0,
    }
    return {**figures, "checks": checks}


# --------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns the JSON document."""
    root = Path(tempfile.mkdtemp(prefix="lifeline-failover-"))

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(f"signal {signum}")  # run the clean-up below

    signal.signal(signal.SIGTERM, on_term)
    mosq: ManagedService | None = None
    influx: ManagedService | None = None
    try:
        mosq = start_mosquitto(root, extra_config="autosave_interval 30")
        influx = start_influxdb(root, database="failover")
        faults = [FAULTS[i % len(FAULTS)] for i in range(args.takeovers)]
        opts = Options(faults, rate=args.rate, devices=args.devices, window_s=args.window,
                       freeze_s=args.freeze)
        return run_failover(opts, root, mosq.info.port, influx.info.url, "failover")
    finally:
        if mosq is not None:
            mosq.stop()
        if influx is not None:
            influx.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

