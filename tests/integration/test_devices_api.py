"""``/api/v1/devices`` on the real app, a real database (SQLite and PostgreSQL) and InfluxDB."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from devices.events import DeviceEvent, EventType
from devices.status import DeviceState, LinkStatus
from devices.store import CachedRegistry, DeviceStore
from devtools.harness import ManagedService
from lifeline.app import create_app
from lifeline.auth import new_token, token_digest
from lifeline.db import open_database
from lifeline.settings import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def api(tmp_path: Path, db_url: str, influxdb: ManagedService
        ) -> tuple[TestClient, dict[str, dict[str, str]], DeviceStore, CachedRegistry]:
    tokens = {role: new_token() for role in ("viewer", "operator", "admin")}
    settings = load_settings(None, run_dir=tmp_path, database={"url": db_url},
                             influx={"url": influxdb.info.url, "database": "lifeline"},
                             api={"tokens": [{"name": r, "role": r, "sha256": token_digest(t)}
                                             for r, t in tokens.items()]})
    engine = open_database(db_url)
    store = DeviceStore(engine)
    cache = CachedRegistry(store)
    app = create_app(settings, engine, device_cache=cache)
    headers = {r: {"Authorization": f"Bearer {t}"} for r, t in tokens.items()}
    return TestClient(app), headers, store, cache


def test_create_get_update_delete_and_cache(api: tuple[TestClient, dict[str, dict[str, str]],
                                                       DeviceStore, CachedRegistry]) -> None:
    client, h, store, cache = api
    body = {"id": "gas-1", "type": "gas_alarm", "grid": "DC-01", "district": "东城区",
            "unit": "燃气公司", "lat": 39.9, "lon": 116.4, "tags": ["household"],
            "limits": {"lel": {"high": 20.0}}, "interval": "30m", "install_date": "2024-01-02"}
    assert client.post("/api/v1/devices", json=body).status_code == 401
    assert client.post("/api/v1/devices", json=body, headers=h["viewer"]).status_code == 403
    resp = client.post("/api/v1/devices", json=body, headers=h["admin"])
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["interval"] == 1800.0 and created["status"]["link"] == "unknown"
    assert cache.get("gas-1") is not None
    assert client.post("/api/v1/devices", json=body, headers=h["admin"]).status_code == 409
    got = client.get("/api/v1/devices/gas-1", headers=h["viewer"]).json()
    assert got["limits"] == {"lel": {"high": 20.0}} and got["district"] == "东城区"
    resp = client.patch("/api/v1/devices/gas-1", json={"grid": "DC-02", "enabled": False},
                        headers=h["admin"])
    assert resp.status_code == 200 and resp.json()["grid"] == "DC-02"
    assert resp.json()["tags"] == ["household"]  # untouched fields stay
    assert cache.get("gas-1") is None  # disabled: out of the hot lookup
    assert client.delete("/api/v1/devices/gas-1", headers=h["admin"]).status_code == 204
    assert client.get("/api/v1/devices/gas-1", headers=h["viewer"]).status_code == 404
    assert client.delete("/api/v1/devices/gas-1", headers=h["admin"]).status_code == 404
    assert store.get("gas-1", include_deleted=True) is not None  # soft


@pytest.mark.parametrize(("body", "fragment"), [
    ({"id": "bad id", "type": "gas_alarm"}, "invalid device id"),
    ({"id": "x", "type": "toaster"}, "unknown device type"),
    ({"id": "x", "type": "gas_alarm", "lat": 95, "lon": 1}, "lat"),
    ({"id": "x", "type": "gas_alarm", "limits": {"lel": {"high": 70}}}, "must not be above"),
    ({"id": "x", "type": "gas_alarm", "limits": {"flow": {"high": 1}}}, "has no metric"),
    ({"id": "x", "type": "gas_alarm", "interval": "whenever"}, "interval"),
    ({"id": "x", "type": "gas_alarm", "tags": ["no spaces"]}, "invalid tag"),
    ({"id": "x", "type": "gas_alarm", "colour": "red"}, "extra"),
    ({"id": "x"}, "missing"),
    ({"id": "x", "type": "gas_alarm", "name": "a\u0000b"}, "control characters"),
])
def test_invalid_bodies_are_refused_with_the_reason(
        api: tuple[TestClient, dict[str, dict[str, str]], DeviceStore, CachedRegistry],
        body: dict[str, object], fragment: str) -> None:
    client, h, store, _ = api
    resp = client.post("/api/v1/devices", json=body, headers=h["admin"])
    assert resp.status_code == 422
    assert fragment in resp.text
    assert store.count() == 0


def test_list_filters_pagination_status_and_bulk_import(
        api: tuple[TestClient, dict[str, dict[str, str]], DeviceStore, CachedRegistry]) -> None:
    client, h, store, cache = api
    csv_body = "id,type,grid,district,unit\n" + "".join(
        f"d-{i:03d},{'gas_alarm' if i % 2 else 'water_pressure'},G{i % 3},dist{i % 2},u{i % 4}\n"
        for i in range(30))
    bad = csv_body + "bad id,gas_alarm,G1,d,u\n"
    resp = client.post("/api/v1/devices/import", content=bad, headers={
        **h["admin"], "Content-Type": "text/csv"})
    assert resp.status_code == 422
    assert resp.json()["problems"] == [{"where": "line 32", "id": "bad id",
                                        "reasons": [resp.json()["problems"][0]["reasons"][0]]}]
    assert store.count() == 0
    assert client.post("/api/v1/devices/import", content=csv_body,
                       headers=h["viewer"]).status_code == 403
    resp = client.post("/api/v1/devices/import?skip_invalid=true", content=bad,
                       headers={**h["admin"], "Content-Type": "text/csv"})
    assert resp.status_code == 200 and resp.json()["created"] == 30
    assert len(cache) == 30
    json_body = [{"id": "d-000", "type": "water_pressure", "grid": "G9"}]
    resp = client.post("/api/v1/devices/import", json=json_body, headers=h["admin"])
    assert resp.json()["updated"] == 1
    store.save_states([DeviceState("d-001", LinkStatus.OFFLINE, 1, 1, "will")])
    page = client.get("/api/v1/devices?type=gas_alarm&limit=5&offset=5",
                      headers=h["viewer"]).json()
    assert page["count"] == 15 and [d["id"] for d in page["data"]] == [
        f"d-{i:03d}" for i in range(11, 21, 2)]
    off = client.get("/api/v1/devices?status=offline", headers=h["viewer"]).json()
    assert [d["id"] for d in off["data"]] == ["d-001"]
    assert off["data"][0]["status"]["reason"] == "will"
    combo = client.get("/api/v1/devices?grid=G1&district=dist1&unit=u1",
                       headers=h["viewer"]).json()
    assert {d["id"] for d in combo["data"]} == {"d-001", "d-013", "d-025"}
    assert client.get("/api/v1/devices?limit=0", headers=h["viewer"]).status_code == 422
    assert client.get("/api/v1/devices?status=sleepy", headers=h["viewer"]).status_code == 422
    for junk in ("[{", "{\"devices\": 3}", "\x00\x01"):
        resp = client.post("/api/v1/devices/import", content=junk, headers=h["admin"])
        assert resp.status_code == 422, junk
    resp = client.post("/api/v1/devices/import", content=b"\xff\xfe", headers=h["admin"])
    assert resp.status_code == 422 and "UTF-8" in resp.text


def test_latest_readings_status_changes_and_events(
        api: tuple[TestClient, dict[str, dict[str, str]], DeviceStore, CachedRegistry],
        influxdb: ManagedService) -> None:
    client, h, store, _ = api
    device_id = f"lat-{time.time_ns() % 10**9}"
    assert client.post("/api/v1/devices", json={"id": device_id, "type": "gas_alarm"},
                       headers=h["admin"]).status_code == 201
    now_ms = int(time.time() * 1000)
    lines = (f"gas_alarm,device={device_id} lel=3.5,battery=3.6 {now_ms - 2000}\n"
             f"gas_alarm,device={device_id} lel=4.25 {now_ms - 1000}\n")
    resp = httpx.post(f"{influxdb.info.url}/write", params={"db": "lifeline", "precision": "ms"},
                      content=lines)
    assert resp.status_code == 204
    store.add_events([(DeviceEvent(device_id, now_ms * 1_000_000, EventType.ALARM, level=2,
                                   metric="lel", value=52.0), "critical")])
    body = client.get(f"/api/v1/devices/{device_id}/latest", headers=h["viewer"]).json()
    assert body["readings_error"] is None
    assert body["readings"]["lel"]["value"] == 4.25
    assert body["readings"]["battery"]["value"] == 3.6
    assert "co_ppm" not in body["readings"]
    assert body["events"][0]["severity"] == "critical" and body["events"][0]["level"] == 2
    assert body["status"]["link"] == "unknown"
    assert client.get("/api/v1/devices/nope/latest", headers=h["viewer"]).status_code == 404
    assert client.get("/api/v1/devices/..%2F/latest", headers=h["viewer"]).status_code == 404
