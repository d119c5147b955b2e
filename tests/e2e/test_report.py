"""``lifeline report``: the shift report from a real InfluxDB filled through the service."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.harness import ManagedService, free_port
from lifeline.app import ApiServer, create_app
from lifeline.auth import new_token, token_digest
from lifeline.db import open_database
from lifeline.settings import load_settings
from tests.e2e.report_page import dump_dom, element_attrs, page_figures, png_stats, screenshot
from tests.e2e.report_shift import STORM_DEVICES, Shift, script_shift
from tests.integration.test_dashboards_queries import City, fill_city
from tests.support import clean_env

pytestmark = pytest.mark.e2e
LIFELINE = [sys.executable, "-m", "lifeline"]
KPI_NAMES = ("处置率", "按期处置率", "结案率", "返工率")


@pytest.fixture(scope="module")
def city(mosquitto: ManagedService, influxdb: ManagedService,
         tmp_path_factory: pytest.TempPathFactory) -> City:
    return fill_city(mosquitto, influxdb, tmp_path_factory.mktemp("report"))


def _env(city: City, tmp_path: Path) -> dict[str, str]:
    env = clean_env()
    env.update(LIFELINE_INFLUX__URL=city.url, LIFELINE_INFLUX__DATABASE=city.database,
               LIFELINE_RUN_DIR=str(tmp_path / "run"))
    return env


@dataclass(frozen=True, slots=True)
class ShiftRun:
    """The scripted 24 h shift in a real InfluxDB and a real SQLite service database."""

    shift: Shift
    influx_url: str
    database: str
    run_dir: Path


@pytest.fixture(scope="module")
def shift(influxdb: ManagedService, tmp_path_factory: pytest.TempPathFactory) -> ShiftRun:
    run_dir = tmp_path_factory.mktemp("shift")
    database = f"shift_{uuid.uuid4().hex[:8]}"
    end_ns = int(time.time()) * 10**9
    played = script_shift(influxdb.info.url, database, f"sqlite:///{run_dir / 'lifeline.db'}",
                          end_ns)
    return ShiftRun(played, influxdb.info.url, database, run_dir)


@pytest.fixture(scope="module")
def api(shift: ShiftRun) -> Iterator[httpx.Client]:
    """The real API over the shift's service database (what the duty officer's tools read)."""
    token = new_token()
    settings = load_settings(None, run_dir=shift.run_dir, api={"tokens": [
        {"name": "duty", "role": "viewer", "sha256": token_digest(token)}]})
    engine = open_database(settings.database_url)
    port = free_port()
    server = ApiServer(create_app(settings, engine), "127.0.0.1", port)
    server.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                          headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + 15
    while True:
        try:
            if client.get("/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "API did not start"
        time.sleep(0.1)
    try:
        yield client
    finally:
        client.close()
        server.stop()
        engine.dispose()


def _count(api: httpx.Client, path: str, **params: Any) -> int:
    r = api.get(path, params={"limit": 1, **params})
    assert r.status_code == 200, r.text
    return int(r.json()["count"])


def _api_state(api: httpx.Client) -> dict[str, int]:
    """Open / overdue cases, firing alerts and offline devices as the API lists them."""
    open_cases = (_count(api, "/api/v1/cases") - _count(api, "/api/v1/cases", state="closed")
                  - _count(api, "/api/v1/cases", state="cancelled"))
    overdue = api.get("/api/v1/cases", params={"overdue": "true", "limit": 1000}).json()
    return {
        "open-cases": open_cases,
        "overdue-cases": sum(1 for c in overdue["data"]
                             if c["state"] not in ("closed", "cancelled")),
        "firing-alerts": _count(api, "/api/v1/alerts", state="firing"),
        "offline-devices": _count(api, "/api/v1/devices", status="offline", enabled="true"),
    }


def _shift_report(run: ShiftRun, tmp_path: Path, out: Path,
                  *args: str) -> subprocess.CompletedProcess[bytes]:
    """``lifeline report`` over the shift (its service database in the run directory)."""
    env = clean_env()
    env.update(LIFELINE_INFLUX__URL=run.influx_url, LIFELINE_INFLUX__DATABASE=run.database,
               LIFELINE_RUN_DIR=str(run.run_dir))
    end = datetime.fromtimestamp(run.shift.end_ns / 1e9, UTC).isoformat()
    done = subprocess.run([*LIFELINE, "report", "--end", end, "--out", str(out), *args],
                          env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    err = done.stderr.decode()
    assert not re.search(r"Glyph \d+.*missing from font", err), err
    assert "fontTools" not in err, "no font subsetting chatter in the command's log"
    return done


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


def test_report_in_chromium_shows_the_handover_state_the_api_lists(
        shift: ShiftRun, api: httpx.Client, tmp_path: Path) -> None:
    """The 24 h report, rendered by headless Chromium: the figures on the page are the
    API's, carried-over items included, and the Chinese text and charts are drawn."""
    out = tmp_path / "day.html"
    _shift_report(shift, tmp_path, out, "--period", "24h", "--pdf")
    dom = dump_dom(out)
    attrs = element_attrs(dom)
    shown = page_figures(dom)
    expected = _api_state(api)
    assert expected["offline-devices"] == len(shift.shift.offline_at_end) == 21
    assert expected["open-cases"] > 0 and expected["overdue-cases"] > 0, expected
    assert {k: shown[k] for k in expected} == expected
    assert attrs["snapshot-source"]["data-source"] == "database"
    assert shown["open-cases-note"] > 0, "cases carried over from earlier shifts are listed"
    assert int(attrs["open-table"]["data-rows"]) == expected["open-cases"]
    assert int(attrs["offline-table"]["data-rows"]) == expected["offline-devices"]
    end_ns = shift.shift.end_ns
    kpi = api.get("/api/v1/kpi", params={"start": _iso(end_ns - 86_400 * 10**9),
                                         "end": _iso(end_ns)}).json()["data"]
    assert kpi and kpi[0]["cases"] > 0
    for name in ("disposal_rate", "on_time_rate", "close_rate", "rework_rate"):
        value = attrs[f"kpi-{name}"]["data-current"]
        want = kpi[0][name]
        assert (value == "") if want is None else float(value) == pytest.approx(want), name
    assert shown["alerts-fired"] >= STORM_DEVICES
    png = screenshot(out, tmp_path / "day.png", 1200, 2400)
    stats = png_stats(png.read_bytes())
    assert (stats.width, stats.height) == (1200, 2400)
    assert stats.ink > 0.05, f"page looks blank: {stats}"
    assert stats.colours > 20, f"no charts drawn: {stats}"
    pdf = out.with_suffix(".pdf").read_bytes()
    assert b"NotoSans" in pdf and b"CJK" in pdf, "the PDF embeds the CJK font"


def test_report_short_shift_hands_over_everything_still_open(
        shift: ShiftRun, api: httpx.Client, tmp_path: Path) -> None:
    """Two minutes with no change: the handover still lists every open item."""
    out = tmp_path / "short.html"
    _shift_report(shift, tmp_path, out, "--period", "2m")
    shown = page_figures(dump_dom(out))
    expected = _api_state(api)
    assert {k: shown[k] for k in expected} == expected
    assert shown["cases-opened"] == 0


def test_report_snapshot_from_influxdb_state_rows(shift: ShiftRun, tmp_path: Path) -> None:
    """Without the database: InfluxDB state rows over the look-back; a look-back shorter
    than the items' age misses them, which the page says."""
    out = tmp_path / "influx.html"
    _shift_report(shift, tmp_path, out, "--period", "2m", "--snapshot", "influxdb")
    attrs = element_attrs(out.read_text("utf-8"))
    assert attrs["snapshot-source"]["data-source"] == "influxdb"
    assert int(attrs["offline-devices"]["data-value"]) == len(shift.shift.offline_at_end)
    assert int(attrs["open-cases"]["data-value"]) > 0
    assert int(attrs["open-cases-note"]["data-value"]) > 0  # carried over
    short = tmp_path / "influx-1h.html"
    _shift_report(shift, tmp_path, short, "--period", "2m", "--snapshot", "influxdb",
                  "--lookback", "1h")
    page = short.read_text("utf-8")
    assert "looking back 0.0416667 d" in page
    assert int(element_attrs(page)["open-cases"]["data-value"]) < int(
        attrs["open-cases"]["data-value"]), "cases unchanged for more than 1 h are not seen"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_report_html_and_pdf(city: City, tmp_path: Path) -> None:
    out = tmp_path / "shift" / "report.html"
    done = subprocess.run([*LIFELINE, "report", "--period", "2h", "--out", str(out), "--pdf"],
                          env=_env(city, tmp_path), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    page = out.read_text("utf-8")
    images = dict(re.findall(r'<img id="(\w+)"[^>]*src="data:image/png;base64,([^"]+)"', page))
    assert set(images) == {"kpis", "alerts_by_type", "alerts_by_grid", "cases"}
    for name, b64 in images.items():
        data = base64.b64decode(b64, validate=True)
        width, height = _png_size(data)
        assert width >= 600 and height >= 250, name
        assert len(data) > 5000, f"{name}: suspiciously small PNG"
    for name in KPI_NAMES:
        assert re.search(rf"<td>{name}[^<]*</td><td>\d+\.\d%</td>", page), name
    overdue = page.split("Overdue cases 超期案件")[1].split("<h2>")[0]
    assert "<tbody><tr>" in overdue, "overdue cases are listed"
    offline = page.split("Devices offline 离线设备")[1]
    assert re.search(r"<td>ga-\d+</td>|<td>[a-z]+-\d+</td>", offline), "offline device listed"
    noisy = page.split("Noisiest rules")[1].split("<h2>")[0]
    assert re.search(r"<td>(gas|water|drain|manhole|event|status)[^<]*</td><td>\d+</td>", noisy)
    pdf = out.with_suffix(".pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
    assert done.stdout.decode().split() == [str(out), str(out.with_suffix(".pdf"))]


def test_report_previous_period_is_compared(city: City, tmp_path: Path) -> None:
    """Ending the report before any data: every KPI is absent now, and nothing breaks."""
    out = tmp_path / "old.html"
    done = subprocess.run([*LIFELINE, "report", "--period", "1h", "--end",
                           "2020-01-01T08:00:00+08:00", "--out", str(out)],
                          env=_env(city, tmp_path), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    page = out.read_text("utf-8")
    assert "no overdue cases" in page and "every device online" in page
    for name in KPI_NAMES:
        assert re.search(rf"<td>{name}[^<]*</td><td>—</td><td>—</td>", page), name


@pytest.mark.parametrize(("args", "message"), [
    (["--period", "0s"], "--period must be positive"),
    (["--period", "40d"], "at most 31d"),
    (["--period", "soon"], "--period"),
    (["--end", "2026-01-01T00:00:00"], "time zone offset"),
    (["--end", "yesterday"], "not an ISO 8601"),
    (["--lookback", "0s"], "--lookback must be positive"),
    (["--snapshot", "redis"], "invalid choice"),
])
def test_report_refuses_bad_arguments(city: City, tmp_path: Path, args: list[str],
                                      message: str) -> None:
    done = subprocess.run([*LIFELINE, "report", "--out", str(tmp_path / "r.html"), *args],
                          env=_env(city, tmp_path), capture_output=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()
    assert not (tmp_path / "r.html").exists()


def test_report_names_an_unreachable_influxdb(tmp_path: Path) -> None:
    env = clean_env()
    env.update(LIFELINE_INFLUX__URL="http://127.0.0.1:9", LIFELINE_RUN_DIR=str(tmp_path))
    done = subprocess.run([*LIFELINE, "report", "--out", str(tmp_path / "r.html")], env=env,
                          capture_output=True, timeout=60)
    assert done.returncode == 3
    err = done.stderr.decode()
    assert "unreachable" in err and "127.0.0.1:9" in err and "Traceback" not in err


def test_report_without_the_required_database_says_so(tmp_path: Path) -> None:
    env = clean_env()
    env.update(LIFELINE_INFLUX__URL="http://127.0.0.1:9", LIFELINE_RUN_DIR=str(tmp_path))
    done = subprocess.run([*LIFELINE, "report", "--snapshot", "database", "--out",
                           str(tmp_path / "r.html")], env=env, capture_output=True, timeout=60)
    assert done.returncode == 3
    err = done.stderr.decode()
    assert "no service database" in err and "lifeline.db" in err and "Traceback" not in err
    assert not (tmp_path / "lifeline.db").exists(), "the report creates no database"
