"""``lifeline simulate``: publish simulated gas and water telemetry."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import aiomqtt
import httpx
import orjson
import sqlalchemy as sa

from devices.registry import write_inventory
from devices.topics import TopicScheme
from ingest.deadletter import DeadLetterStore, Reason
from lifeline.commands.common import CommandError, err, settings_from
from lifeline.db import create_db_engine
from lifeline.progress import Progress
from lifeline.settings import Settings
from simulators.city import write_city_inventory
from simulators.errors import ScenarioError
from simulators.fleet import make_fleet
from simulators.publisher import Publisher, SimulationPlan
from simulators.runner import RunnerOptions, RunnerStats, run_fleet, stats_json
from simulators.scenario import (
    Scenario,
    builtin_scenario,
    live_start,
    load_scenario,
    stamp_offsets,
)
from simulators.stream import CityRun

log = logging.getLogger(__name__)
SETTLE_POLL_S = 0.5
SETTLE_STEADY = 4  # polls without a new dead letter: the service has caught up
TOKEN_ENV = "LIFELINE_API_TOKEN"  # noqa: S105 - the name of the variable, not a token


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
    p.add_argument("--keep-dates", action="store_true",
                   help="scenario: keep the scenario's own start date (default: re-based to "
                        "now, as a live service expects)")
    p.add_argument("--api", default=os.environ.get("LIFELINE_API_URL") or None,
                   help="scenario: the service's API (default $LIFELINE_API_URL; token in "
                        f"${TOKEN_ENV}) to count what it dead-lettered; without it, the "
                        "database of the settings is read if it exists")
    p.add_argument("--settle", type=float, default=10.0,
                   help="scenario: longest wait (s) for the service's dead letters to settle "
                        "after publishing (default 10)")
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
    progress = Progress("simulate", args.duration, unit="s")
    pub.progress = lambda res, elapsed: progress.update(elapsed, f"{res.messages:,} messages")
    try:
        result = pub.run()
    except OSError as exc:
        raise CommandError(
            f"cannot reach MQTT broker {settings.mqtt.host}:{settings.mqtt.port}: {exc}", code=3
        ) from exc
    finally:
        progress.close()
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
    head = scenario.scenario
    # a live service stamps readings on the wall clock: the scenario starts now
    start_s = None if args.keep_dates else live_start(head.duration, args.speed, time.time())
    try:
        run = CityRun(scenario, start_s=start_s)
    except ScenarioError as exc:
        raise CommandError(str(exc), code=2) from exc
    if args.inventory:
        write_city_inventory(run.layout, args.inventory)
        print(f"wrote {len(run.layout.devices)} devices to {args.inventory}")
        return 0
    _check_window(run, args.speed, settings)
    probe = DeadLetterProbe.from_args(args, settings)
    before = probe.counts()
    options = RunnerOptions(host=settings.mqtt.host, port=settings.mqtt.port,
                            prefix=settings.mqtt.prefix, speed=args.speed, mode=args.mode,
                            qos=args.qos)
    progress = Progress(f"simulate {scenario.name}", head.duration, unit="simulated s")

    def report(stats: RunnerStats, sim_now_s: float) -> None:
        progress.update(sim_now_s - run.start_s, f"{stats.messages:,} messages")

    try:
        stats = run_fleet(run, options, progress=report)
    except (OSError, aiomqtt.MqttError) as exc:
        raise CommandError(
            f"cannot reach MQTT broker {settings.mqtt.host}:{settings.mqtt.port}: {exc}", code=3
        ) from exc
    finally:
        progress.close()
    doc = orjson.loads(stats_json(stats))
    doc["start"] = datetime.fromtimestamp(run.start_s, UTC).isoformat()
    if before is not None:
        rejected = probe.settled_increase(before, args.settle)
        doc["dead_lettered"] = rejected
        doc["dead_letters_from"] = probe.source
        unexpected = sum(rejected.values()) - stats.malformed
        if rejected and unexpected > 0:
            err(f"warning: the service dead-lettered {sum(rejected.values())} messages while "
                f"this ran ({', '.join(f'{k}={v}' for k, v in sorted(rejected.items()))}); "
                f"{stats.malformed} were malformed on purpose. "
                "`lifeline dlq list` shows them.")
    else:
        err("note: what the service dead-lettered is unknown (no --api and no database); "
            "`lifeline dlq list` on the service shows it")
    print(orjson.dumps(doc).decode() if args.json
          else orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return 0


def _check_window(run: CityRun, speed: float, settings: Settings) -> None:
    """Warn when readings will be stamped outside what the service accepts."""
    behind, ahead = stamp_offsets(run.start_s, run.end_s - run.start_s, speed, time.time())
    max_past = settings.ingest.max_past.seconds
    max_future = settings.ingest.max_future.seconds
    start = datetime.fromtimestamp(run.start_s, UTC).isoformat(timespec="seconds")
    if behind > max_past:
        err(f"warning: the scenario's readings (from {start}) are up to {behind / 86400:.1f} "
            f"days old when sent, beyond ingest.max_past = {settings.ingest.max_past}: "
            "the service will dead-letter them as ts_past (leave out --keep-dates to "
            "re-base the scenario to now)")
    if ahead > max_future:
        err(f"warning: the scenario's readings (from {start}) are up to {ahead:.0f} s in the "
            f"future when sent, beyond ingest.max_future = {settings.ingest.max_future}: "
            "the service will dead-letter them as ts_future")


class DeadLetterProbe:
    """Counts the service's dead letters by reason: through its API, or its database."""

    def __init__(self, source: str | None, *, api: str = "", token: str = "",
                 database_url: str = "") -> None:
        self.source = source
        self._api = api.rstrip("/")
        self._token = token
        self._database_url = database_url

    @classmethod
    def from_args(cls, args: argparse.Namespace, settings: Settings) -> DeadLetterProbe:
        """The API when ``--api`` is given (token from the environment), else the
        settings' database when it exists (the service's, when run with its settings)."""
        if args.api:
            token = os.environ.get(TOKEN_ENV, "")
            if not token:
                raise CommandError(f"--api needs a viewer token in ${TOKEN_ENV}", code=2)
            return cls("api", api=args.api, token=token)
        url = settings.database_url
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
            return cls(None)
        return cls("database", database_url=url)

    def counts(self) -> dict[str, int] | None:
        """Stored dead letters by reason (None: unknown)."""
        if self.source == "api":
            return self._api_counts()
        if self.source == "database":
            return self._db_counts()
        return None

    def _api_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            with httpx.Client(base_url=self._api, headers=headers, timeout=10) as client:
                for reason in Reason:
                    if reason is Reason.DLQ_OVERFLOW:
                        continue
                    resp = client.get("/api/v1/dlq", params={"reason": reason.value,
                                                             "limit": 1})
                    resp.raise_for_status()
                    counts[reason.value] = int(resp.json()["count"])
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise CommandError(f"dead letters from {self._api}: {exc}", code=3) from exc
        return counts

    def _db_counts(self) -> dict[str, int] | None:
        engine = create_db_engine(self._database_url)
        try:
            if not sa.inspect(engine).has_table("dead_letters"):
                self.source = None
                return None
            return DeadLetterStore(engine).count()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("cannot count dead letters in the database: %s", exc)
            self.source = None
            return None
        finally:
            engine.dispose()

    def settled_increase(self, before: dict[str, int], settle_s: float) -> dict[str, int]:
        """Dead letters added since ``before``, by reason, once the count stops growing
        (the service decodes what the broker delivered a moment after it was sent)."""
        deadline = time.monotonic() + settle_s
        last = self.counts() or {}
        steady = 0
        while time.monotonic() < deadline and steady < SETTLE_STEADY:
            time.sleep(SETTLE_POLL_S)
            now = self.counts() or {}
            steady = steady + 1 if now == last else 0
            last = now
        return {k: n - before.get(k, 0) for k, n in sorted(last.items())
                if n > before.get(k, 0)}
