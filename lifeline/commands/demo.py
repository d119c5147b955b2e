"""``lifeline demo``: the whole loop on embedded defaults, with live progress.

Starts private Mosquitto and InfluxDB, ``lifeline serve``, the simulator and a
simulated dispatch system (receives the webhooks, calls back); prints progress,
then a summary; stops everything.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import httpx

from alerts.cases.kpi import compute
from devices.registry import write_inventory
from devices.topics import TopicScheme
from devtools.harness import Harness, HarnessError, free_port
from ingest.deadletter import DeadLetterStore
from lifeline.commands.common import CommandError
from lifeline.db import open_database
from lifeline.influxquery import count_values
from simulators.dispatch import DispatchPlan, DispatchSimulator
from simulators.fleet import make_fleet
from simulators.publisher import Publisher, SimulationPlan

log = logging.getLogger(__name__)
MEASUREMENTS = ("gas_alarm", "water_pressure")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` command."""
    p = sub.add_parser("demo", help="run everything locally with live progress")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of simulated traffic (default: until Ctrl-C)")
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--rate", type=float, default=500.0, help="messages per second")
    p.add_argument("--run-dir", type=Path, default=Path("run/demo"))
    p.set_defaults(func=demo_command)


def _write_config(path: Path, run_dir: Path, mqtt_port: int, influx_url: str,
                  inventory: Path, hook_url: str, secret: str, api_port: int) -> None:
    path.write_text(
        f'run_dir = "{run_dir}"\n'
        f'[mqtt]\nport = {mqtt_port}\nclient_id = "lifeline-demo"\n'
        f'[influx]\nurl = "{influx_url}"\ndatabase = "lifeline"\n'
        f'[devices]\ninventory = "{inventory}"\n'
        f'[webhook]\nurl = "{hook_url}"\nsecret = "{secret}"\n'
        f'[api]\nenabled = true\nport = {api_port}\n'
        f'[alerts]\ntick_interval = 0.5\n'
        f'[cases]\nverify_after = "10s"\nkpi_interval = "5s"\n',
        encoding="utf-8",
    )


def demo_command(args: argparse.Namespace) -> int:
    """Run the demo and print the summary table."""
    if args.devices < 1 or args.rate <= 0 or (args.duration is not None and args.duration <= 0):
        raise CommandError("--devices, --rate and --duration must be positive", code=2)
    run_dir: Path = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    harness = Harness(run_dir / "services")
    api_port = free_port()
    # the simulated dispatch system: receives the webhooks and drives cases by callbacks
    receiver = DispatchSimulator(
        secrets.token_hex(16), f"http://127.0.0.1:{api_port}",
        DispatchPlan(accept_after_s=2.0, handle_after_s=5.0, return_rate=0.2, late_rate=0.2,
                     late_extra_s=5.0)).start()
    serve: subprocess.Popen[bytes] | None = None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print("starting Mosquitto and InfluxDB ...", flush=True)
        try:
            infos = harness.up(["mosquitto", "influxdb"])
        except HarnessError as exc:
            raise CommandError(str(exc), code=3) from exc
        mqtt, influx = infos["mosquitto"], infos["influxdb"]
        fleet = make_fleet(args.devices)
        inventory = run_dir / "inventory.csv"
        write_inventory(inventory, fleet)
        config = run_dir / "lifeline.toml"
        db_path = run_dir / "lifeline.db"
        db_path.unlink(missing_ok=True)
        _write_config(config, run_dir, mqtt.port, influx.url, inventory, receiver.url,
                      receiver.secret, api_port)
        serve_log = (run_dir / "serve.log").open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
        serve = subprocess.Popen(
            [sys.executable, "-m", "lifeline", "--config", str(config), "serve"],
            stdout=serve_log, stderr=subprocess.STDOUT, env=env,
        )
        print(f"serve started (pid {serve.pid}, log {run_dir / 'serve.log'})", flush=True)
        ready_by = time.monotonic() + 60  # publish only once serve has subscribed
        while (time.monotonic() < ready_by and serve.poll() is None
               and b"serving:" not in (run_dir / "serve.log").read_bytes()):
            time.sleep(0.2)
        if serve.poll() is not None:
            raise CommandError(f"serve exited early; see {run_dir / 'serve.log'}", code=3)
        drift = next(d.id for d in fleet if d.type == "gas_alarm")
        plan = SimulationPlan(devices=fleet, rate=args.rate, duration_s=args.duration,
                              drift_device=drift, drift_after_s=3.0, drift_rate_per_s=5.0,
                              malformed=3 if args.duration else 0)
        pub = Publisher(mqtt.host, mqtt.port, TopicScheme("lifeline"), plan, "lifeline-demo-sim")
        sim = threading.Thread(target=pub.run, name="simulator")
        sim.start()
        started = time.monotonic()
        dead = DeadLetterStore(open_database(f"sqlite:///{db_path}"))
        while sim.is_alive():
            if stop.is_set():
                pub.stop_event.set()
            sim.join(2.0)
            _progress(started, pub, influx.url, receiver, dead)
        print("simulator finished; waiting for every reading to be stored ...", flush=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _stored_all(influx.url, pub.result.values):
            time.sleep(0.5)
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
        _progress(started, pub, influx.url, receiver, dead)
        _summary(pub, influx.url, receiver, dead, f"sqlite:///{db_path}")
        return 0
    finally:
        if serve is not None and serve.poll() is None:
            serve.kill()
            serve.wait()
        receiver.stop()
        stopped = harness.down()
        print(f"stopped: serve, simulated dispatch, {', '.join(stopped) or 'no services'}",
              flush=True)


def _stored(url: str) -> int:
    try:
        return count_values(url, "lifeline", MEASUREMENTS)
    except (httpx.HTTPError, ValueError):
        return -1


def _stored_all(url: str, published: int) -> bool:
    return _stored(url) >= published


def _progress(started: float, pub: Publisher, url: str, receiver: DispatchSimulator,
              dead: DeadLetterStore) -> None:
    elapsed = time.monotonic() - started
    res = pub.result
    rate = res.values / elapsed if elapsed > 0 else 0.0
    print(
        f"[{elapsed:6.1f}s] published {res.values:>8,} readings ({rate:7,.0f}/s)  "
        f"stored {_stored(url):>8,}  alerts {len(receiver.events('alert.firing')):>3}  "
        f"webhooks {len(receiver.events()):>3}  dead-letters {sum(dead.count().values()):>3}",
        flush=True,
    )


def _kpi_rows(db_url: str) -> list[tuple[str, str]]:
    """KPIs of every case of the run, from the service database."""
    (kpi,) = compute(open_database(db_url), 0, time.time_ns() + 1) or (None,)
    if kpi is None:
        return []

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    return [("处置率 disposal rate (handled / registered)", pct(kpi.disposal_rate)),
            ("按期处置率 on-time rate", pct(kpi.on_time_rate)),
            ("结案率 close rate", pct(kpi.close_rate)),
            ("返工率 rework rate", pct(kpi.rework_rate)),
            ("mean time to dispatch / handle", f"{secs(kpi.mean_dispatch_s)} / "
                                               f"{secs(kpi.mean_handle_s)}")]


def _summary(pub: Publisher, url: str, receiver: DispatchSimulator,
             dead: DeadLetterStore, db_url: str) -> None:
    res = pub.result
    rows = [
        ("devices simulated", f"{len(pub.plan.devices):,}"),
        ("messages published", f"{res.messages:,}"),
        ("readings published", f"{res.values:,}"),
        ("readings stored in InfluxDB (queried back)", f"{_stored(url):,}"),
        ("malformed payloads published", f"{res.malformed:,}"),
        ("messages dead-lettered", f"{sum(dead.count().values()):,}"),
        ("alerts raised (alert.firing)", f"{len(receiver.events('alert.firing')):,}"),
        ("alerts resolved (alert.resolved)", f"{len(receiver.events('alert.resolved')):,}"),
        ("webhooks received (signature valid)", f"{len(receiver.events()):,}"),
        ("webhooks with a bad signature", f"{receiver.stats.bad_signatures:,}"),
        ("cases reported (case.reported)", f"{len(receiver.events('case.reported')):,}"),
        ("cases dispatched (case.dispatched)", f"{len(receiver.events('case.dispatched')):,}"),
        ("cases accepted by the simulated dispatch", f"{receiver.stats.accepted:,}"),
        ("cases handled by the simulated dispatch", f"{receiver.stats.handled:,}"),
        ("cases returned by the simulated dispatch", f"{receiver.stats.returned:,}"),
        ("cases closed (case.closed)", f"{len(receiver.events('case.closed')):,}"),
        *_kpi_rows(db_url),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    print("citylifeline demo summary")
    print("-" * (width + 14))
    for key, value in rows:
        print(f"{key:<{width}}  {value:>12}")
    print("-" * (width + 14))
