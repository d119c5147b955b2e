"""Device registry store against a real SQLite file and the real PostgreSQL."""

from __future__ import annotations

import io
import json
import random
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from devices.catalogue import Catalogue
from devices.events import DeviceEvent, EventType
from devices.inventory import COLUMNS, parse_csv, read_file, write_csv
from devices.model import Device
from devices.status import Change, DeviceState, LinkStatus, StatusChange
from devices.store import (
    MIGRATIONS,
    CachedRegistry,
    DeviceExistsError,
    DeviceFilter,
    DeviceNotFoundError,
    DeviceStore,
)
from lifeline.cli import main
from lifeline.db import create_db_engine, migrate, open_database

pytestmark = pytest.mark.integration

CAT = Catalogue.builtin()
TYPES = sorted(CAT.types)


def generated_csv(n: int, seed: int = 7) -> str:
    """An inventory of ``n`` rows using every column."""
    rng = random.Random(seed)
    buf = io.StringIO()
    devices = []
    for i in range(n):
        dtype = TYPES[i % len(TYPES)]
        limits = {"lel": {"high": 20.0}} if dtype == "gas_alarm" and i % 3 == 0 else {}
        devices.append(Device(
            id=f"{dtype[:3]}-{i:06d}", type=dtype, grid=f"G{rng.randint(1, 40):03d}",
            district=rng.choice(["东城区", "西城区", "nanshan"]), unit=f"unit-{i % 7}",
            name=f"部件 {i}", limits=limits, lat=round(rng.uniform(39, 41), 6),
            lon=round(rng.uniform(115, 117), 6), address=f"路 {i} 号",
            dma=f"DMA-{i % 13}" if dtype.startswith("water") else "",
            install_date=date(2020, 1 + i % 12, 1 + i % 28), tags=("census", f"batch{i % 4}"),
            enabled=i % 50 != 0, interval_s=float(300 + i % 5 * 300)))
    write_csv(buf, devices)
    return buf.getvalue()


def test_crud_soft_delete_filters_and_pagination(db_url: str) -> None:
    engine = open_database(db_url)
    store = DeviceStore(engine)
    a = Device("a-1", "gas_alarm", grid="G1", district="d1", unit="gas", name="一号",
               limits={"lel": {"high": 20.0}}, lat=1.5, lon=2.5, tags=("x", "y"),
               install_date=date(2024, 2, 29), interval_s=600.0)
    b = Device("b-1", "water_pressure", grid="G2", district="d1", unit="water", dma="DMA-1")
    c = Device("c-1", "water_pressure", grid="G2", district="d2", unit="water", enabled=False)
    for d in (a, b, c):
        store.create(d)
    assert store.get("a-1") == a
    with pytest.raises(DeviceExistsError):
        store.create(a)
    assert store.query(DeviceFilter(grid="G2"))[1] == 2
    assert [d.id for d in store.query(DeviceFilter(district="d1", type="water_pressure"))[0]] \
        == ["b-1"]
    assert store.query(DeviceFilter(unit="water", enabled=False))[0] == [c]
    page, total = store.query(offset=1, limit=1)
    assert (total, [d.id for d in page]) == (3, ["b-1"])
    store.replace(replace(b, name="renamed"))
    b_new = store.get("b-1")
    assert b_new is not None and b_new.name == "renamed"
    with pytest.raises(DeviceNotFoundError):
        store.replace(Device("zz", "gas_alarm"))
    assert store.delete("b-1") and not store.delete("b-1")
    assert store.get("b-1") is None and store.get("b-1", include_deleted=True) is not None
    assert store.count() == 2
    store.create(b)  # a deleted id can be registered again
    assert store.get("b-1") == b
    # status filter joins the persisted status
    store.save_states([DeviceState("a-1", LinkStatus.ONLINE, 5, 5),
                       DeviceState("b-1", LinkStatus.OFFLINE, 6, 1, reason="will")])
    assert [d.id for d in store.query(DeviceFilter(status=LinkStatus.OFFLINE))[0]] == ["b-1"]
    assert [d.id for d in store.query(DeviceFilter(status=LinkStatus.UNKNOWN))[0]] == ["c-1"]
    engine.dispose()


def test_import_of_10000_rows_is_idempotent_and_exports_round_trip(db_url: str) -> None:
    text = generated_csv(10_000)
    parsed = parse_csv(text, CAT)
    assert parsed.problems == [] and len(parsed.devices) == 10_000
    engine = open_database(db_url)
    store = DeviceStore(engine)
    counts = store.upsert_many(parsed.devices)
    assert (counts.created, counts.updated, counts.unchanged) == (10_000, 0, 0)
    again = store.upsert_many(parsed.devices)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 10_000)
    changed = [replace(d, grid="NEW") if i % 10 == 0 else d
               for i, d in enumerate(parsed.devices)]
    third = store.upsert_many(changed)
    assert (third.created, third.updated, third.unchanged) == (0, 1000, 9000)
    assert store.count() == 10_000
    assert store.query(DeviceFilter(grid="NEW"))[1] == 1000
    exported = io.StringIO()
    write_csv(exported, store.all())
    assert sorted(parse_csv(exported.getvalue(), CAT).devices, key=lambda d: d.id) == sorted(
        changed, key=lambda d: d.id)
    registry = CachedRegistry(store)
    assert len(registry) == sum(1 for d in changed if d.enabled)
    # status rows in bulk: first 600 (small path), then 1,200 (bulk path, half updates)
    store.save_states([DeviceState(d.id, LinkStatus.ONLINE, 1, 2) for d in changed[:600]])
    store.save_states([DeviceState(d.id, LinkStatus.OFFLINE, 3, 2, "silence")
                       for d in changed[:1200]])
    states = store.states()
    assert len(states) == 1200 and {s.link for s in states.values()} == {LinkStatus.OFFLINE}
    engine.dispose()


def test_upgrade_from_version_1_keeps_devices(db_url: str) -> None:
    engine = create_db_engine(db_url)
    assert migrate(engine, {"devices": MIGRATIONS[:1]}) == {"devices": 1}
    store = DeviceStore(engine)
    store.create(Device("old-1", "gas_alarm", grid="G9"))
    assert "device_status" not in sa.inspect(engine).get_table_names()
    engine.dispose()
    upgraded = open_database(db_url)
    assert DeviceStore(upgraded).get("old-1") == Device("old-1", "gas_alarm", grid="G9")
    assert "device_status" in sa.inspect(upgraded).get_table_names()
    with upgraded.connect() as conn:
        version = conn.execute(sa.text(
            "SELECT version FROM schema_versions WHERE component = 'devices'")).scalar_one()
    assert version == MIGRATIONS[-1][0]
    upgraded.dispose()


def test_states_changes_and_events_persist(db_url: str) -> None:
    engine = open_database(db_url)
    store = DeviceStore(engine)
    store.create(Device("g-1", "gas_alarm"))
    s1 = DeviceState("g-1", LinkStatus.ONLINE, 10, 11, "status", battery=3.6, rssi=-80.0,
                     firmware="1.4.2")
    assert store.save_states([s1]) == 1
    s2 = replace(s1, link=LinkStatus.OFFLINE, since_ns=20, reason="will", battery_low=True)
    store.save_states([s2])
    assert store.states() == {"g-1": s2}
    store.add_changes([StatusChange("g-1", 10, Change.ONLINE, "status"),
                       StatusChange("g-1", 20, Change.OFFLINE, "will")])
    assert [c.change for c in store.changes("g-1")] == [Change.OFFLINE, Change.ONLINE]
    event = DeviceEvent("g-1", 30, EventType.ALARM, level=2, metric="lel", value=55.5)
    store.add_events([(event, "critical")])
    (stored,) = store.events("g-1")
    assert (stored.event, stored.severity) == (event, "critical")
    engine.dispose()


def test_cached_registry_refresh_keeps_unchanged_objects(db_url: str) -> None:
    engine = open_database(db_url)
    store = DeviceStore(engine)
    store.upsert_many([Device("a", "gas_alarm"), Device("b", "gas_alarm")])
    registry = CachedRegistry(store)
    a_obj = registry.get("a")
    store.replace(Device("b", "gas_alarm", grid="G2"))
    store.replace(Device("a", "gas_alarm"))
    assert registry.refresh() == 1
    assert registry.get("a") is a_obj
    b_new = registry.get("b")
    assert b_new is not None and b_new.grid == "G2"
    store.replace(Device("a", "gas_alarm", enabled=False))
    registry.invalidate("a")
    assert registry.get("a") is None and len(registry) == 1
    engine.dispose()


def _cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str, *argv: str) -> int:
    config = tmp_path / "lifeline.toml"
    config.write_text("", encoding="utf-8")
    monkeypatch.setenv("LIFELINE_CONFIG", str(config))
    monkeypatch.setenv("LIFELINE_DATABASE__URL", db_url)
    monkeypatch.setenv("LIFELINE_RUN_DIR", str(tmp_path / "run"))
    return main(list(argv))


def test_cli_import_is_all_or_nothing_then_idempotent_and_export_round_trips(
        tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "inv.csv"
    lines = generated_csv(200).splitlines()
    lines.insert(10, "bad id,gas_alarm" + "," * (len(COLUMNS) - 2))
    lines.insert(20, "ok-x,toaster" + "," * (len(COLUMNS) - 2))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _cli(monkeypatch, tmp_path, db_url, "devices", "import", str(path)) == 1
    err = capsys.readouterr().err
    assert "line 11 ('bad id'): invalid device id" in err
    assert "line 21 ('ok-x'): unknown device type 'toaster'" in err
    assert "2 of 202 rows are bad; nothing imported" in err
    engine = open_database(db_url)
    store = DeviceStore(engine)
    assert store.count() == 0
    assert _cli(monkeypatch, tmp_path, db_url, "devices", "import", str(path),
                "--skip-invalid") == 0
    assert "200 created" in capsys.readouterr().out
    assert store.count() == 200
    assert _cli(monkeypatch, tmp_path, db_url, "devices", "import", str(path),
                "--skip-invalid") == 0
    assert "0 created, 0 updated, 200 unchanged" in capsys.readouterr().out
    for fmt in ("csv", "json"):
        out = tmp_path / f"export.{fmt}"
        assert _cli(monkeypatch, tmp_path, db_url, "devices", "export", str(out)) == 0
        assert _cli(monkeypatch, tmp_path, db_url, "devices", "import", str(out)) == 0
        assert "200 unchanged" in capsys.readouterr().out
        assert sorted(read_file(out, CAT).devices, key=lambda d: d.id) == store.all()
    assert _cli(monkeypatch, tmp_path, db_url, "devices", "import",
                str(tmp_path / "missing.csv")) == 1
    capsys.readouterr()
    assert _cli(monkeypatch, tmp_path, db_url, "devices", "list", "--type", "gas_alarm",
                "--json", "--limit", "1000") == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    gas = sum(1 for d in store.all() if d.type == "gas_alarm")  # one type in each 9 rows
    assert gas >= 20 and len(listed) == gas and {d["type"] for d in listed} == {"gas_alarm"}
    assert _cli(monkeypatch, tmp_path, db_url, "devices", "mqtt-acl", "--out",
                str(tmp_path / "acl")) == 0
    acl = (tmp_path / "acl" / "acl").read_text()
    assert "user lifeline-serve\ntopic read lifeline/#" in acl
    assert acl.count("topic write lifeline/") == sum(1 for d in store.all() if d.enabled)
    engine.dispose()
