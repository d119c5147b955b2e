"""``lifeline services up|down|status``: private Mosquitto and InfluxDB for operators."""

from __future__ import annotations

import argparse
from pathlib import Path

from devtools.harness import Harness, HarnessError
from lifeline.commands.common import CommandError, settings_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``services`` command."""
    p = sub.add_parser("services", help="start/stop private Mosquitto and InfluxDB")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="where data and state live (default: <run_dir>/services)")
    ssub = p.add_subparsers(dest="services_command", required=True)
    up = ssub.add_parser("up", help="start the services in the background")
    up.add_argument("--with-victoria", action="store_true",
                    help="also start VictoriaMetrics (InfluxDB v2 write API)")
    up.set_defaults(func=up_command)
    ssub.add_parser("down", help="stop what `up` started").set_defaults(func=down_command)
    ssub.add_parser("status", help="show the services").set_defaults(func=status_command)


def _harness(args: argparse.Namespace) -> Harness:
    run_dir = args.run_dir or settings_from(args).run_dir / "services"
    return Harness(run_dir)


def up_command(args: argparse.Namespace) -> int:
    """Start services detached and print how to point the service at them."""
    names = ["mosquitto", "influxdb"] + (["victoria-metrics"] if args.with_victoria else [])
    try:
        infos = _harness(args).up(names, detach=True)
    except HarnessError as exc:
        raise CommandError(str(exc), code=3) from exc
    for name, info in infos.items():
        print(f"{name:>17}: {info.url} (pid {info.pid}, data {info.data_dir})")
    if "mosquitto" in infos:
        print(f"export LIFELINE_MQTT__PORT={infos['mosquitto'].port}")
    if "influxdb" in infos:
        print(f"export LIFELINE_INFLUX__URL={infos['influxdb'].url}")
    return 0


def down_command(args: argparse.Namespace) -> int:
    """Stop exactly what ``up`` started."""
    stopped = _harness(args).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def status_command(args: argparse.Namespace) -> int:
    """Print each recorded service and whether it is alive; exit 1 if any is down."""
    status = _harness(args).status()
    if not status:
        print("no services recorded")
        return 1
    all_up = True
    for name, (info, alive) in status.items():
        all_up &= alive
        print(f"{name:>17}: {'up' if alive else 'DOWN'} {info.url} (pid {info.pid})")
    return 0 if all_up else 1
