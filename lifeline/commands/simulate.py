"""``lifeline simulate``: publish simulated gas and water telemetry."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import FrameType

import orjson

from devices.registry import write_inventory
from devices.topics import TopicScheme
from lifeline.commands.common import CommandError, settings_from
from simulators.fleet import make_fleet
from simulators.publisher import Publisher, SimulationPlan


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` command."""
    p = sub.add_parser("simulate", help="publish simulated device telemetry over MQTT")
    p.add_argument("--devices", type=int, default=100, help="fleet size (default 100)")
    p.add_argument("--rate", type=float, default=100.0, help="messages per second (default 100)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--drift", default="auto",
                   help="device whose gas level drifts past the limits: an id, 'auto' "
                        "(the first gas alarm) or 'none'")
    p.add_argument("--drift-after", type=float, default=2.0, help="seconds before drift starts")
    p.add_argument("--malformed", type=int, default=0, help="malformed payloads to mix in")
    p.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    p.add_argument("--inventory", type=Path, default=None,
                   help="write the fleet inventory CSV here (for `devices.inventory`) and exit")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=simulate_command)


def simulate_command(args: argparse.Namespace) -> int:
    """Publish, then print what was published."""
    if args.devices < 1 or args.rate <= 0 or (args.duration is not None and args.duration <= 0):
        raise CommandError("--devices, --rate and --duration must be positive", code=2)
    settings = settings_from(args)
    fleet = make_fleet(args.devices, args.seed)
    if args.inventory:
        write_inventory(args.inventory, fleet)
        print(f"wrote {len(fleet)} devices to {args.inventory}")
        return 0
    drift: str | None = args.drift
    if drift == "auto":
        drift = next((d.id for d in fleet if d.type == "gas_alarm"), None)
    elif drift == "none":
        drift = None
    elif drift not in {d.id for d in fleet}:
        raise CommandError(f"--drift: no device {drift!r} in the fleet", code=2)
    plan = SimulationPlan(devices=fleet, rate=args.rate, duration_s=args.duration,
                          drift_device=drift, drift_after_s=args.drift_after,
                          malformed=args.malformed, qos=args.qos, seed=args.seed)
    pub = Publisher(settings.mqtt.host, settings.mqtt.port, TopicScheme(settings.mqtt.prefix),
                    plan)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        pub.stop_event.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        result = pub.run()
    except OSError as exc:
        raise CommandError(
            f"cannot reach MQTT broker {settings.mqtt.host}:{settings.mqtt.port}: {exc}", code=3
        ) from exc
    summary = {"messages": result.messages, "values": result.values,
               "malformed": result.malformed, "values_by_type": result.per_type,
               "devices": len(fleet), "drift_device": drift,
               "elapsed_s": round(result.elapsed_s, 3)}
    if args.json:
        print(orjson.dumps(summary).decode())
    else:
        for key, value in summary.items():
            print(f"{key:>16}: {value}")
    return 0
