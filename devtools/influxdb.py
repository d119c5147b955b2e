"""InfluxDB 1.x for tests and tooling: configuration, database creation, start."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx

from devtools.procs import (
    BINARIES,
    INFLUXDB,
    LOOPBACK,
    PACKAGES,
    START_TIMEOUT,
    AfterReady,
    HarnessError,
    ManagedService,
    ServiceInfo,
    ServiceStartError,
    find_binary,
    free_port,
    http_probe,
    prepare_dir,
    start_service,
)

logger = logging.getLogger(__name__)


def _toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _influx_create_database(database: str) -> AfterReady:
    def create(info: ServiceInfo) -> None:
        escaped = database.replace("\\", "\\\\").replace('"', '\\"')
        query = f'CREATE DATABASE "{escaped}"'
        try:
            response = httpx.post(f"{info.url}/query", data={"q": query}, timeout=10.0)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ServiceStartError(f"influxdb: {query} failed: {exc}") from exc
        errors = [body.get("error")] + [r.get("error") for r in body.get("results", [])]
        if response.status_code != 200 or any(errors):
            raise ServiceStartError(
                f"influxdb: {query} failed with HTTP {response.status_code}: {response.text}"
            )
        logger.info("influxdb: database %r ready", database)

    return create


def start_influxdb(
    run_dir: Path,
    port: int | None = None,
    *,
    database: str | None = "lifeline",
) -> ManagedService:
    """Start InfluxDB 1.x with its HTTP API on 127.0.0.1 and wait for ``GET /ping`` → 204.

    Writes ``run_dir/influxdb/influxdb.conf`` (reporting and self-monitoring off,
    RPC bind address on another free loopback port) and, when ``database`` is
    given, creates that database (again after every restart; it is idempotent).
    """
    binary = find_binary(BINARIES[INFLUXDB], PACKAGES[INFLUXDB])
    base = prepare_dir(run_dir, INFLUXDB)
    data_dir = base / "data"
    for sub in ("meta", "data", "wal"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    conf = base / "influxdb.conf"
    log_file = base / "influxdb.log"
    if database is not None and not database:
        raise HarnessError("influxdb: database name must not be empty")
    # INFLUXDB_* variables override the config file; keep them from leaking in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}

    def build(chosen: int) -> ManagedService:
        rpc_port = free_port()
        conf.write_text(
            f"""# written by devtools.harness; rewritten on every start_influxdb()
# upstream spells the first key reporting-disabled, Debian's build reporting-enabled;
# unknown keys are ignored, so both are set.
reporting-disabled = true
reporting-enabled = false
bind-address = {_toml_str(f"{LOOPBACK}:{rpc_port}")}

[meta]
  dir = {_toml_str(str(data_dir / "meta"))}

[data]
  dir = {_toml_str(str(data_dir / "data"))}
  wal-dir = {_toml_str(str(data_dir / "wal"))}
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = {_toml_str(f"{LOOPBACK}:{chosen}")}
  log-enabled = false
  pprof-enabled = false
  max-body-size = 0

[continuous_queries]
  log-enabled = false

[logging]
  suppress-logo = true
"""
        )
        return ManagedService(
            name=INFLUXDB,
            argv=[binary, "-config", str(conf)],
            host=LOOPBACK,
            port=chosen,
            data_dir=data_dir,
            log_file=log_file,
            probe=http_probe("/ping", 204),
            start_timeout=START_TIMEOUT[INFLUXDB],
            after_ready=_influx_create_database(database) if database else None,
            env=env,
            cwd=base,
        )

    return start_service(build, port)


# --------------------------------------------------------------------------- victoria-metrics
