"""A scripted 24 h duty shift for the shift report (值班交接报告), on a scripted clock.

The real alert pipeline and case book (SQLite or PostgreSQL service database) and a real
InfluxDB receive what the service would write, with every timestamp chosen: cases carried
over from three days before the shift (some overdue, some never touched since), alerts of
several rules through the day, an offline storm (121 devices of one district lose power for
40 minutes; 21 stay offline), and the dispatch system working the cases.

``python -m tests.e2e.report_shift docs/report-24h.png`` (``scripts/report-screenshot``)
regenerates the screenshot in the docs from it.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa
from matplotlib import image as mpimg
from PIL import Image

from alerts.cases.actions import apply_action
from alerts.cases.model import CaseConfig, StageDeadlines
from alerts.cases.store import cases
from alerts.cases.workflow import Action
from alerts.lifecycle.model import AlertConfig
from alerts.lifecycle.pipeline import AlertPipeline
from dashboards.lines import device_info_lines
from devices.model import Device
from devices.registry import MemoryRegistry
from devices.status import Change, DeviceState, LinkStatus, StatusChange
from devices.store import DeviceStore
from devtools.harness import start_influxdb
from lifeline.db import open_database
from rules.device_events import OFFLINE_RULE
from rules.model import Finding, FindingState, Severity
from tests.e2e.report_page import screenshot
from tsdb.lineproto import FieldValue
from tsdb.schema import DEVICE_STATUS

MIN = 60 * 10**9
HOUR = 60 * MIN
DAY = 24 * HOUR
STORM_DEVICES = 121
STORM_STAY_OFFLINE = 21
DISTRICTS = {"东城": ("DC01", "DC02", "DC03"), "西城": ("XC01", "XC02", "XC03")}
TYPES = (("gas_alarm", "gas-company"), ("gas_pipeline", "gas-company"),
         ("water_pressure", "water-utility"), ("water_flow", "water-utility"),
         ("drain_level", "drainage-bureau"), ("manhole_cover", "municipal-facilities"),
         ("heat_pipe", "heating-company"))
RULES = {"gas_alarm": ("gas-lel-level1", "lel", Severity.MAJOR),
         "gas_pipeline": ("gas-ch4-valve-well", "ch4_ppm", Severity.MAJOR),
         "water_pressure": ("water-pressure-low", "pressure", Severity.MINOR),
         "water_flow": ("water-flow-burst", "flow", Severity.CRITICAL),
         "drain_level": ("drain-level-high", "level", Severity.MAJOR),
         "manhole_cover": ("manhole-tilt", "tilt", Severity.MINOR),
         "heat_pipe": ("heat-temp-high", "temperature", Severity.WARNING)}
DEADLINES = {s: StageDeadlines(register_ns=30 * MIN, dispatch_ns=30 * MIN, handle_ns=4 * HOUR,
                               verify_ns=2 * HOUR)
             for s in ("critical", "major", "minor", "warning")}


@dataclass(slots=True)
class Shift:
    """What was scripted (for checks)."""

    end_ns: int
    devices: list[Device]
    offline_at_end: set[str] = field(default_factory=set)
    storm_at_ns: int = 0


def _devices() -> list[Device]:
    out = []
    n = 0
    for district, grids in DISTRICTS.items():
        for grid in grids:
            for dtype, unit in TYPES:
                for _ in range(6 if district == "东城" else 3):
                    n += 1
                    out.append(Device(f"{dtype.split('_')[0][:5]}-{n:03d}", dtype, grid=grid,
                                      district=district, unit=f"{unit}-{grid[:2].lower()}",
                                      name=f"{district}{grid} {dtype} {n}"))
    return out


def _status_line(d: Device, link: LinkStatus, change: Change, reason: str, ts_ns: int) -> str:
    tags = {"device": d.id, "type": d.type, "grid": d.grid, "district": d.district,
            "unit": d.unit}
    fields: dict[str, FieldValue] = {
        "change": change.value, "state": link.value,
        "online": 1 if link is LinkStatus.ONLINE else 0, "battery_low": 0, "weak_signal": 0,
        "reason": reason}
    return DEVICE_STATUS.line(tags, fields, ts_ns)


def write_lines(influx_url: str, database: str, lines: list[str]) -> None:
    """Write line protocol (ns) to InfluxDB 1.x."""
    for i in range(0, len(lines), 5000):
        r = httpx.post(f"{influx_url}/write", params={"db": database, "precision": "ns"},
                       content="\n".join(lines[i:i + 5000]).encode(), timeout=30)
        r.raise_for_status()


def script_shift(influx_url: str, database: str, db_url: str, end_ns: int,
                 seed: int = 7) -> Shift:
    """Play the shift ending at ``end_ns`` into the service database and InfluxDB."""
    rng = random.Random(seed)
    httpx.post(f"{influx_url}/query", params={"q": f'CREATE DATABASE "{database}"'},
               timeout=30).raise_for_status()
    engine = open_database(db_url)
    devices = _devices()
    store = DeviceStore(engine)
    store.upsert_many(devices)
    start_ns = end_ns - DAY
    t0 = start_ns - 3 * DAY
    lines: list[str] = device_info_lines(devices, t0)
    clock = [t0]
    pipeline = AlertPipeline(engine, MemoryRegistry(devices), AlertConfig(resolve_delay_ns=0),
                             CaseConfig(deadlines=DEADLINES, verify_after_ns=10 * MIN),
                             write_lines=lines.extend, clock=lambda: clock[0])
    shift = Shift(end_ns, devices)
    states = [DeviceState(d.id, LinkStatus.ONLINE, t0, t0, "status") for d in devices]
    store.save_states(states)
    lines += [_status_line(d, LinkStatus.ONLINE, Change.ONLINE, "status", t0) for d in devices]

    events: list[tuple[int, Callable[[], object]]] = []

    def at(ts: int, fn: Callable[[], object]) -> None:
        events.append((ts, fn))

    def alert(d: Device, fire_ns: int, clear_ns: int | None) -> None:
        rule, metric, severity = RULES[d.type]
        at(fire_ns, lambda: pipeline.process([Finding(rule, d.id, metric, FindingState.FIRING,
                                                      severity, fire_ns, 60.0)]))
        if clear_ns is not None:
            at(clear_ns, lambda: pipeline.process([Finding(
                rule, d.id, metric, FindingState.RESOLVED, severity, clear_ns, 1.0)]))

    # carried over: alerts three days to a few hours before the shift, some never cleared
    for i, d in enumerate(rng.sample(devices, 10)):
        fire = t0 + i * 5 * HOUR + rng.randrange(HOUR)
        alert(d, fire, None if i % 3 == 0 else fire + rng.randrange(20 * MIN, 3 * HOUR))
    # the shift: alerts through the day, busier by day than by night
    for h in range(24):
        for _ in range(rng.choice((1, 2, 3, 4) if 7 <= h <= 21 else (0, 1, 1, 2))):
            d = rng.choice(devices)
            fire = start_ns + h * HOUR + rng.randrange(HOUR)
            clear = fire + rng.randrange(10 * MIN, 2 * HOUR)
            alert(d, fire, clear if clear < end_ns - 30 * MIN or rng.random() < 0.5 else None)
    # the storm: a power cut in 东城 takes 121 devices offline for 40 minutes; 21 stay off
    shift.storm_at_ns = storm = start_ns + 14 * HOUR + 10 * MIN
    storm_devices = [d for d in devices if d.district == "东城"][:STORM_DEVICES]
    stay = {d.id for d in storm_devices[-STORM_STAY_OFFLINE:]}
    shift.offline_at_end = set(stay)

    def link(d: Device, online: bool, ts: int) -> Callable[[], None]:
        def apply() -> None:
            change = Change.ONLINE if online else Change.OFFLINE
            state = LinkStatus.ONLINE if online else LinkStatus.OFFLINE
            reason = "status" if online else "will"
            store.save_states([DeviceState(d.id, state, ts, ts, reason)])
            store.add_changes([StatusChange(d.id, ts, change, reason)])
            lines.append(_status_line(d, state, change, reason, ts))
            pipeline.process([Finding(OFFLINE_RULE, d.id, "link",
                                      FindingState.RESOLVED if online else FindingState.FIRING,
                                      Severity.MINOR, ts, 1.0 if online else 0.0)])
        return apply

    for i, d in enumerate(storm_devices):
        at(storm + i * 700_000_000, link(d, False, storm + i * 700_000_000))
        if d.id not in stay:
            back = storm + 40 * MIN + i * 900_000_000
            at(back, link(d, True, back))
    # the dispatch system works each case some time after it opens
    plan: dict[int, int] = {}

    def work() -> None:
        now = clock[0]
        with engine.connect() as conn:
            rows = conn.execute(sa.select(cases.c.id, cases.c.state, cases.c.created_ns,
                                          cases.c.return_count)
                                .where(cases.c.state.in_(("reported", "dispatched",
                                                          "in_progress")))).all()
        for case_id, state, created, returns in rows:
            lag = plan.setdefault(case_id, rng.choice((20, 40, 90, 200, 400, 3000)) * MIN)
            if state == "reported" and case_id % 5 != 0 and now - created > 20 * MIN:
                apply_action(engine, pipeline.cases, case_id, Action.REGISTER, "duty", now)
            elif state == "dispatched" and now - created > lag // 4:
                apply_action(engine, pipeline.cases, case_id, Action.ACCEPT, "dispatch", now)
            elif state == "in_progress" and now - created > lag:
                action = (Action.RETURN if case_id % 7 == 3 and not returns
                          else Action.HANDLED)
                apply_action(engine, pipeline.cases, case_id, action, "dispatch", now)

    for ts in range(t0, end_ns, 10 * MIN):
        at(ts + 5 * MIN, work)
    for ts, fn in sorted(events, key=lambda e: e[0]):
        for tick in range(clock[0] - clock[0] % (10 * MIN) + 10 * MIN, ts, 10 * MIN):
            clock[0] = tick
            pipeline.tick(tick)
        clock[0] = ts
        fn()
    clock[0] = end_ns - 1
    pipeline.tick(end_ns - 1)
    write_lines(influx_url, database, lines)
    engine.dispose()
    return shift


# --------------------------------------------------------------------- the docs screenshot

def crop_and_shrink(png: bytes, out: Path, max_colours: int = 96) -> Path:
    """Cut the blank bottom of a screenshot and store it with a small palette."""
    pixels = np.asarray(mpimg.imread(io.BytesIO(png), format="png"))[..., :3]
    rows = np.nonzero((pixels.min(axis=2) < 0.97).any(axis=1))[0]
    bottom = int(rows[-1]) + 24 if len(rows) else pixels.shape[0]
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.crop((0, 0, img.width, min(img.height, bottom)))
    img.quantize(colors=max_colours, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Script a 24 h shift, run ``lifeline report`` on it and screenshot the page."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, nargs="?", default=Path("docs/report-24h.png"))
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=4200)
    p.add_argument("--end", default="2026-03-02T08:00:00+08:00",
                   help="end of the scripted shift (ISO 8601)")
    args = p.parse_args(argv)
    end = datetime.fromisoformat(args.end).astimezone(UTC)
    with tempfile.TemporaryDirectory(prefix="report-shift-") as tmp:
        root = Path(tmp)
        influx = start_influxdb(root / "influx", database=None)
        try:
            script_shift(influx.info.url, "shift", f"sqlite:///{root / 'lifeline.db'}",
                         int(end.timestamp()) * 10**9)
            page = root / "report.html"
            env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
            env.update(LIFELINE_INFLUX__URL=influx.info.url, LIFELINE_INFLUX__DATABASE="shift",
                       LIFELINE_RUN_DIR=str(root))
            subprocess.run([sys.executable, "-m", "lifeline", "report", "--period", "24h",
                            "--end", args.end, "--out", str(page)], env=env, check=True)
            shot = screenshot(page, root / "shot.png", args.width, args.height)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            crop_and_shrink(shot.read_bytes(), args.out)
        finally:
            influx.stop()
    print(f"{args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
