"""``lifeline simulate``: publish simulated gas and water telemetry."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import FrameType

import aiomqtt
import orjson

from devices.registry import write_inventory
from devices.topics import TopicScheme
from lifeline.commands.common import CommandError, settings_from
from lifeline.settings import Settings
from simulators.city import write_city_inventory
from simulators.errors import ScenarioError
from simulators.fleet import make_fleet
from simulators.publisher import Publisher, SimulationPlan
from simulators.runner import RunnerOptions, run_fleet, stats_json
from simulators.scenario import Scenario, builtin_scenario, load_scenario
from simulators.stream import CityRun


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
    p.add_argument("--scenario", default=None,
                   help="run a scenario (shipped name or TOML file) with the aiomqtt fleet "
                        "runner instead; --inventory then writes that city's inventory")
    p.add_argument("--speed", type=float, default=1.0,
                   help="scenario: simulated seconds per wall second (0: as fast as possible)")
    p.add_argument("--mode", choices=("devices", "gateway"), default="devices",
                   help="scenario: one MQTT connection per device (with its will), or one "
                        "gateway connection publishing arrays")
    p.set_defaults(func=simulate_command)


def simulate_command(args: argparse.Namespace) -> int:
    """Publish, then print what was published."""
    if args.devices < 1 or args.rate <= 0 or (args.duration is not None and args.duration <= 0):
        raise CommandError("--devices, --rate and --duration must be positive", code=2)
    settings = settings_from(args)
    if args.scenario:
        return _run_scenario(args, settings)
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


def load_scenario_arg(value: str) -> Scenario:
    """A scenario from a shipped name or a TOML file path."""
    path = Path(value)
    try:
        return load_scenario(path if path.suffix == ".toml" else builtin_scenario(value))
    except ScenarioError as exc:
        raise CommandError(str(exc), code=2) from exc


def _run_scenario(args: argparse.Namespace, settings: Settings) -> int:
    scenario = load_scenario_arg(args.scenario)
    if args.speed < 0:
        raise CommandError("--speed must be >= 0", code=2)
    try:
        run = CityRun(scenario)
    except ScenarioError as exc:
        raise CommandError(str(exc), code=2) from exc
    if args.inventory:
        write_city_inventory(run.layout, args.inventory)
        print(f"wrote {len(run.layout.devices)} devices to {args.inventory}")
        return 0
    options = RunnerOptions(host=settings.mqtt.host, port=settings.mqtt.port,
                            prefix=settings.mqtt.prefix, speed=args.speed, mode=args.mode,
                            qos=args.qos)
    try:
        stats = run_fleet(run, options)
    except (OSError, aiomqtt.MqttError) as exc:
        raise CommandError(
            f"cannot reach MQTT broker {settings.mqtt.host}:{settings.mqtt.port}: {exc}", code=3
        ) from exc
    out = stats_json(stats)
    print(out.decode() if args.json else orjson.dumps(orjson.loads(out),
                                                      option=orjson.OPT_INDENT_2).decode())
    return 0
