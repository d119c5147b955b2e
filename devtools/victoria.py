"""VictoriaMetrics (the InfluxDB v2 write API) for tests and tooling."""

from __future__ import annotations

import logging
from pathlib import Path

from devtools.procs import (
    BINARIES,
    LOOPBACK,
    PACKAGES,
    START_TIMEOUT,
    VICTORIA_METRICS,
    ManagedService,
    find_binary,
    http_probe,
    prepare_dir,
    start_service,
)

logger = logging.getLogger(__name__)


def start_victoria_metrics(run_dir: Path, port: int | None = None) -> ManagedService:
    """Start VictoriaMetrics on 127.0.0.1 and wait for ``GET /health`` → 200.

    It serves the InfluxDB v2 write API at ``/api/v2/write`` and exports raw
    samples at ``/api/v1/export``.  Retention is 100 years and the response cache
    is off, so tests can write old timestamps and read them back at once.
    """
    binary = find_binary(BINARIES[VICTORIA_METRICS], PACKAGES[VICTORIA_METRICS])
    base = prepare_dir(run_dir, VICTORIA_METRICS)
    data_dir = base / "data"
    data_dir.mkdir(exist_ok=True)
    log_file = base / "victoria-metrics.log"

    def build(chosen: int) -> ManagedService:
        return ManagedService(
            name=VICTORIA_METRICS,
            argv=[
                binary,
                f"-storageDataPath={data_dir}",
                f"-httpListenAddr={LOOPBACK}:{chosen}",
                "-retentionPeriod=100y",
                "-search.disableCache",
            ],
            host=LOOPBACK,
            port=chosen,
            data_dir=data_dir,
            log_file=log_file,
            probe=http_probe("/health", 200),
            start_timeout=START_TIMEOUT[VICTORIA_METRICS],
            cwd=base,
        )

    return start_service(build, port)
