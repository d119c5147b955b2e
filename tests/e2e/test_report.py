"""``lifeline report``: the shift report from a real InfluxDB filled through the service."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lifeline.harness import ManagedService
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
