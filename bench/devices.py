"""Device layer costs, each against its ceiling measured in the same run.

* status tracking: the decoder alone (ceiling) vs decoder + device monitor
  (sign of life, battery/rssi health, persistence) on batches of single-reading
  messages from ``--devices`` devices: the monitor's share of the decode stage;
* inventory import: ``csv.reader`` over the file (ceiling) vs full validation,
  and the upsert of every row into a SQLite file (and PostgreSQL with ``--pg``).
"""

from __future__ import annotations

import argparse
import csv
import io
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from devices.catalogue import Catalogue
from devices.inventory import parse_csv, write_csv
from devices.model import Device
from devices.series import SeriesTable
from devices.store import CachedRegistry, DeviceStore
from devices.topics import TopicScheme
from ingest.batch import RawMessage
from ingest.decode import Decoder
from lifeline.db import open_database
from lifeline.device_status import DeviceMonitor
from lifeline.settings import DevicesSettings

TYPES = ("gas_alarm", "water_pressure", "water_quality", "drain_level")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lifeline bench devices``."""
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch", type=int, default=5000, help="messages per batch")
    p.add_argument("--rows", type=int, default=10_000, help="inventory rows to import")
    p.add_argument("--pg", default="",
                   help="also import into PostgreSQL: a server URL; the bench creates and "
                        "drops a database of its own there")


def _fleet(n: int) -> list[Device]:
    return [Device(f"d-{i:06d}", TYPES[i % len(TYPES)], grid=f"G{i % 97}", district="d",
                   unit="u", lat=30.0 + i * 1e-5, lon=114.0, tags=("bench",),
                   interval_s=900.0) for i in range(n)]


def _messages(devices: list[Device], count: int, t0: int) -> list[RawMessage]:
    metric = {"gas_alarm": "lel", "water_pressure": "pressure", "water_quality": "ph",
              "drain_level": "level"}
    out = []
    for i in range(count):
        d = devices[i % len(devices)]
        values = {metric[d.type]: 1.0 + (i % 7) * 0.1, "battery": 3.6 - (i % 5) * 0.01,
                  "rssi": -80.0}
        out.append(RawMessage(f"lifeline/{d.id}/telemetry",
                              orjson.dumps({"ts": t0 // 1_000_000, "values": values}), t0))
    return out


def _tracking(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    devices = _fleet(args.devices)
    engine = open_database(f"sqlite:///{work / 'track.db'}")
    store = DeviceStore(engine)
    store.upsert_many(devices)
    registry = CachedRegistry(store)
    catalogue = Catalogue.builtin()
    t0 = time.time_ns()
    batches = [_messages(devices, args.batch, t0 + b * 1_000_000_000)
               for b in range(args.batches)]
    series = SeriesTable()
    decoder = Decoder(TopicScheme("lifeline"), registry, catalogue, series)
    lines: list[str] = []
    monitor = DeviceMonitor(store, registry, catalogue, series, lines.extend,
                            DevicesSettings(), now_ns=t0)
    monitor.tick(True, 1, t0)
    monitor.process(decoder.decode(batches[0]), t0)  # warm: series table, first "online"
    monitor.flush()
    decode_s = monitor_s = 0.0
    for i, batch in enumerate(batches[1:], start=1):
        start = time.perf_counter()
        result = decoder.decode(batch)
        mid = time.perf_counter()
        monitor.process(result, t0 + i)
        decode_s += mid - start
        monitor_s += time.perf_counter() - mid
    start = time.perf_counter()
    persisted = monitor.flush()  # every device's last_seen, once per refresh interval
    flush_s = time.perf_counter() - start
    messages = args.batch * (args.batches - 1)
    engine.dispose()
    return {
        "devices": args.devices, "messages": messages,
        "decode_msgs_per_s": round(messages / decode_s),
        "monitor_msgs_per_s": round(messages / monitor_s),
        "monitor_share_of_decode_stage": round(monitor_s / (decode_s + monitor_s), 3),
        "state_flush_rows": persisted, "state_flush_s": round(flush_s, 3),
    }


def _import(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    buf = io.StringIO()
    write_csv(buf, _fleet(args.rows))
    text = buf.getvalue()
    start = time.perf_counter()
    rows = sum(1 for _ in csv.reader(io.StringIO(text)))
    ceiling = time.perf_counter() - start
    catalogue = Catalogue.builtin()
    start = time.perf_counter()
    parsed = parse_csv(text, catalogue)
    validate = time.perf_counter() - start
    out: dict[str, Any] = {
        "rows": rows - 1, "csv_reader_rows_per_s": round((rows - 1) / ceiling),
        "validate_rows_per_s": round(len(parsed.devices) / validate),
        "validate_vs_csv_reader": round(ceiling / validate, 3),
    }
    urls = {"sqlite": f"sqlite:///{work / 'import.db'}"}
    scratch = f"lifeline_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT") if args.pg else None
    if admin is not None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{scratch}"')
        urls["postgresql"] = make_url(args.pg).set(database=scratch).render_as_string(
            hide_password=False)
    try:
        _upserts(urls, parsed.devices, out)
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{scratch}"')
            admin.dispose()
    return out


def _upserts(urls: dict[str, str], devices: list[Device], out: dict[str, Any]) -> None:
    for name, url in urls.items():
        engine = open_database(url)
        store = DeviceStore(engine)
        start = time.perf_counter()
        counts = store.upsert_many(devices)
        first = time.perf_counter() - start
        start = time.perf_counter()
        store.upsert_many(devices)
        again = time.perf_counter() - start
        out[f"{name}_insert_rows_per_s"] = round(counts.created / first) if counts.created \
            else None
        out[f"{name}_reimport_unchanged_rows_per_s"] = round(len(devices) / again)
        engine.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run both measurements; returns the JSON-able result."""
    with tempfile.TemporaryDirectory(prefix="lifeline-bench-devices-") as tmp:
        work = Path(tmp)
        return {"status_tracking": _tracking(args, work), "inventory_import": _import(args, work)}
