"""Service harness: start, stop and restart Mosquitto, InfluxDB 1.x and VictoriaMetrics locally.

The harness runs the Debian-packaged binaries as child processes on free loopback
ports, each with its own configuration, data directory and log file under a run
directory.  It is used by the integration tests (see ``tests/harness_fixtures.py``)
and by ``lifeline services up|status|down``.

The harness is split by service: :mod:`devtools.procs` (ports, binaries,
:class:`ManagedService`), :mod:`devtools.mosquitto`, :mod:`devtools.influxdb`,
:mod:`devtools.victoria`; this module is the :class:`Harness` and re-exports them.

Layout of a run directory::

    run_dir/
      services.json                  state file written by Harness (pids, ports, argv)
      mosquitto/mosquitto.conf       generated configuration
      mosquitto/data/                persistence (mosquitto.db)
      mosquitto/mosquitto.log        broker log (log_dest file) plus its stdout/stderr
      influxdb/influxdb.conf
      influxdb/data/{meta,data,wal}/
      influxdb/influxdb.log
      victoria-metrics/data/
      victoria-metrics/victoria-metrics.log

Every process is started in its own session (``start_new_session=True``) so that
Ctrl-C in a parent CLI does not kill it half way.  Services started without
``detach`` are stopped when the Python process exits normally (``atexit``);
detached services outlive it and are stopped with :meth:`Harness.down`, which
only signals a pid whose ``/proc/<pid>/cmdline`` still equals the recorded argv.

The system Mosquitto on port 1883 is never used: ports always come from
:func:`free_port`, and a service only counts as ready when the listening socket
on its port belongs to the process the harness started.
"""


from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from devtools.influxdb import start_influxdb
from devtools.mosquitto import TlsFiles, make_test_pki, start_mosquitto, write_mosquitto_passwords
from devtools.procs import (
    INFLUXDB,
    MOSQUITTO,
    SERVICE_NAMES,
    STATE_FILE_NAME,
    STATE_VERSION,
    VICTORIA_METRICS,
    HarnessError,
    ManagedService,
    MissingBinaryError,
    ServiceInfo,
    ServiceStartError,
    find_binary,
    free_port,
    info_from_json,
    info_to_json,
    process_cpu_s,
    process_matches,
    stop_recorded_pid,
)
from devtools.victoria import start_victoria_metrics

__all__ = [
    "INFLUXDB",
    "MOSQUITTO",
    "SERVICE_NAMES",
    "STATE_FILE_NAME",
    "VICTORIA_METRICS",
    "Harness",
    "HarnessError",
    "ManagedService",
    "MissingBinaryError",
    "ServiceInfo",
    "ServiceStartError",
    "TlsFiles",
    "find_binary",
    "free_port",
    "make_test_pki",
    "process_cpu_s",
    "start_influxdb",
    "start_mosquitto",
    "start_victoria_metrics",
    "write_mosquitto_passwords",
]

logger = logging.getLogger(__name__)

_STARTERS: Final[dict[str, Callable[[Path], ManagedService]]] = {
    MOSQUITTO: start_mosquitto,
    INFLUXDB: start_influxdb,
    VICTORIA_METRICS: start_victoria_metrics,
}


# --------------------------------------------------------------------------- harness


class Harness:
    """A set of services in one run directory, recorded in ``run_dir/services.json``.

    The state file lets another process (``lifeline services status|down``) find
    and stop services started with ``up(detach=True)``.  Its format::

        {"version": 1, "detached": true, "written_at": "...",
         "services": {"mosquitto": {"name", "host", "port", "pid", "data_dir",
                                    "log_file", "url", "argv": [...]}, ...}}
    """

    def __init__(self, run_dir: Path) -> None:
        """Use ``run_dir`` (created on :meth:`up`) for configs, data, logs and the state file."""
        self.run_dir = Path(run_dir).resolve()
        self.state_file = self.run_dir / STATE_FILE_NAME
        self.services: dict[str, ManagedService] = {}
        self._detached = False

    def __enter__(self) -> Harness:
        """Return self."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the services (see :meth:`down`)."""
        self.down()

    def up(
        self,
        services: Sequence[str] = (MOSQUITTO, INFLUXDB),
        *,
        detach: bool = False,
    ) -> dict[str, ServiceInfo]:
        """Start ``services`` (names from :data:`SERVICE_NAMES`) and write the state file.

        With ``detach=True`` the processes outlive this Python process; otherwise they
        are stopped at interpreter exit.  Raises :class:`HarnessError` when services
        recorded in the state file are still running; if one service fails to start,
        those already started are stopped again.
        """
        names = list(dict.fromkeys(services))
        unknown = [n for n in names if n not in _STARTERS]
        if unknown:
            raise HarnessError(
                f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICE_NAMES)}"
            )
        running = [name for name, (_, alive) in self.status().items() if alive]
        if running:
            raise HarnessError(
                f"{', '.join(running)} already running from {self.state_file}; run down first"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started: dict[str, ManagedService] = {}
        try:
            for name in names:
                started[name] = _STARTERS[name](self.run_dir)
        except BaseException:
            for service in reversed(started.values()):
                service.stop()
            raise
        self._detached = detach
        for service in started.values():
            if detach:
                service.detach()
            service._start_listeners.append(lambda _svc: self._write_state())
        self.services = started
        self._write_state()
        return {name: service.info for name, service in started.items()}

    def down(self, timeout: float = 10.0) -> list[str]:
        """Stop the services recorded in the state file and remove it; return the names stopped.

        A recorded pid is only signalled while ``/proc/<pid>/cmdline`` still equals
        the recorded argv, so a pid reused by another process is left alone.
        """
        records = self._read_state()
        stopped: list[str] = []
        for name, (info, argv) in reversed(list(records.items())):
            service = self.services.get(name)
            if service is not None and service.info.pid == info.pid and service.argv == tuple(argv):
                was_running = service.is_running()
                service.stop(timeout)
                if was_running:
                    stopped.append(name)
            elif stop_recorded_pid(name, info.pid, argv, timeout):
                stopped.append(name)
        for service in self.services.values():
            service.stop(timeout)
        self.services = {}
        self.state_file.unlink(missing_ok=True)
        stopped.reverse()
        return stopped

    def status(self) -> dict[str, tuple[ServiceInfo, bool]]:
        """Services in the state file with whether each recorded pid still runs its argv."""
        return {
            name: (info, process_matches(info.pid, argv))
            for name, (info, argv) in self._read_state().items()
        }

    def _read_state(self) -> dict[str, tuple[ServiceInfo, list[str]]]:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise HarnessError(f"cannot read state file {self.state_file}: {exc}") from exc
        try:
            return {name: info_from_json(name, entry) for name, entry in raw["services"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HarnessError(f"malformed state file {self.state_file}: {exc!r}") from exc

    def _write_state(self) -> None:
        state = {
            "version": STATE_VERSION,
            "detached": self._detached,
            "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "services": {
                name: info_to_json(service.info, service.argv)
                for name, service in self.services.items()
            },
        }
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)
