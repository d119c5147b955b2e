"""pytest plugin: real Mosquitto, InfluxDB and VictoriaMetrics for a whole test session.

Register with ``pytest_plugins = ["tests.harness_fixtures"]`` (or ``-p tests.harness_fixtures``).
Each service runs on its own free loopback port under one session run directory
and is stopped when the session ends.  A missing binary fails the fixture with a
:class:`devtools.harness.MissingBinaryError` that names the apt package.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.harness import (
    ManagedService,
    start_influxdb,
    start_mosquitto,
    start_victoria_metrics,
)


@pytest.fixture(scope="session")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directory shared by the session's services (one subdirectory per service)."""
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def mosquitto(run_root: Path) -> Iterator[ManagedService]:
    """A Mosquitto broker with persistence, anonymous access, on a free loopback port."""
    service = start_mosquitto(run_root)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def influxdb(run_root: Path) -> Iterator[ManagedService]:
    """An InfluxDB 1.x server with the database ``lifeline`` created."""
    service = start_influxdb(run_root, database="lifeline")
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def victoria(run_root: Path) -> Iterator[ManagedService]:
    """A VictoriaMetrics server (InfluxDB v2 write API at /api/v2/write)."""
    service = start_victoria_metrics(run_root)
    try:
        yield service
    finally:
        service.stop()
