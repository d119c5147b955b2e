"""Shared process and port helpers of the service harness: free loopback ports,
binaries, ``/proc`` checks, the :class:`ManagedService` child process and its
start/ready/stop cycle, and the errors.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import httpx

logger = logging.getLogger(__name__)

MOSQUITTO: Final = "mosquitto"
INFLUXDB: Final = "influxdb"
VICTORIA_METRICS: Final = "victoria-metrics"
SERVICE_NAMES: Final[tuple[str, ...]] = (MOSQUITTO, INFLUXDB, VICTORIA_METRICS)
"""Names accepted by :meth:`Harness.up`, in start order."""

STATE_FILE_NAME: Final = "services.json"
"""Name of the state file a :class:`Harness` keeps in its run directory."""

LOOPBACK: Final = "127.0.0.1"

_EXTRA_BIN_DIRS: Final = ("/usr/sbin", "/usr/bin", "/usr/local/bin")
PACKAGES: Final = {
    MOSQUITTO: "mosquitto",
    INFLUXDB: "influxdb",
    VICTORIA_METRICS: "victoria-metrics",
}
BINARIES: Final = {
    MOSQUITTO: "mosquitto",
    INFLUXDB: "influxd",
    VICTORIA_METRICS: "victoria-metrics",
}
START_TIMEOUT: Final = {MOSQUITTO: 15.0, INFLUXDB: 30.0, VICTORIA_METRICS: 30.0}
_PORT_ATTEMPTS: Final = 3  # fresh ports tried when an auto-chosen port was taken meanwhile
_KILL_WAIT: Final = 5.0
STATE_VERSION: Final = 1


# --------------------------------------------------------------------------- errors


class HarnessError(Exception):
    """Root error of the service harness."""


class MissingBinaryError(HarnessError):
    """A service binary is not installed; the message names the apt package to install."""


class ServiceStartError(HarnessError):
    """A service exited or did not answer in time; the message includes the tail of its log."""


class _PortInUseError(ServiceStartError):
    """The service exited because its port was taken (retried with another free port)."""


# --------------------------------------------------------------------------- info


@dataclass(frozen=True)
class ServiceInfo:
    """Where a started service listens and where its files are.

    ``port`` is the main port: the MQTT port for Mosquitto, the HTTP port for
    InfluxDB and VictoriaMetrics.
    """

    name: str
    host: str
    port: int
    pid: int
    data_dir: Path
    log_file: Path

    @property
    def url(self) -> str:
        """``mqtt://host:port`` for Mosquitto, ``http://host:port`` for the HTTP services."""
        scheme = "mqtt" if self.name == MOSQUITTO else "http"
        return f"{scheme}://{self.host}:{self.port}"


def info_to_json(info: ServiceInfo, argv: Sequence[str]) -> dict[str, Any]:
    return {
        "name": info.name,
        "host": info.host,
        "port": info.port,
        "pid": info.pid,
        "data_dir": str(info.data_dir),
        "log_file": str(info.log_file),
        "url": info.url,
        "argv": list(argv),
    }


def info_from_json(name: str, raw: Mapping[str, Any]) -> tuple[ServiceInfo, list[str]]:
    info = ServiceInfo(
        name=str(raw.get("name", name)),
        host=str(raw["host"]),
        port=int(raw["port"]),
        pid=int(raw["pid"]),
        data_dir=Path(raw["data_dir"]),
        log_file=Path(raw["log_file"]),
    )
    argv = [str(a) for a in raw.get("argv", [])]
    return info, argv


# --------------------------------------------------------------------------- ports, binaries

_issued_lock = threading.Lock()
_issued_ports: set[tuple[str, int]] = set()


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that is free right now.

    The kernel picks the port (bind to port 0).  A port is never returned twice
    by one process, so services started one after another cannot be handed the
    same port.  Another process may still take it before it is used; the
    ``start_*`` functions retry with a new port when that happens.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        with _issued_lock:
            if (host, port) in _issued_ports:
                continue
            _issued_ports.add((host, port))
        return port
    raise HarnessError(f"could not find a free port on {host}")


def find_binary(name: str, package: str) -> str:
    """Return the path of executable ``name`` from PATH, /usr/sbin, /usr/bin or /usr/local/bin.

    Raises :class:`MissingBinaryError` naming the apt ``package`` when it is not found.
    """
    found = shutil.which(name)
    if found:
        return found
    for directory in _EXTRA_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise MissingBinaryError(
        f"{name} not found on PATH or in {', '.join(_EXTRA_BIN_DIRS)}: "
        f"install it with `apt-get install {package}`"
    )


# --------------------------------------------------------------------------- /proc helpers


def _read_cmdline(pid: int) -> list[str] | None:
    """Argv of a live process, or None when it is gone (zombies have an empty cmdline)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def _proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first); [] when
    there is no process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return []
    return stat.rpartition(")")[2].split()


def _proc_state(pid: int) -> str | None:
    """The state letter from /proc/<pid>/stat (R, S, Z, ...), or None when there is no process."""
    fields = _proc_stat(pid)
    return fields[0] if fields else None


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; 0 when it is unknown or gone
    (benchmarks: the service's network process, the broker, InfluxDB)."""
    fields = _proc_stat(pid) if pid else []
    if len(fields) < 13:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pid_alive(pid: int) -> bool:
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def process_matches(pid: int, argv: Sequence[str]) -> bool:
    """True when ``pid`` is alive and still runs exactly ``argv`` (guards against pid reuse)."""
    if pid <= 0 or not argv:
        return False
    return _read_cmdline(pid) == list(argv)


def _reap_if_child(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_pid_gone(pid: int, timeout: float, pidfd: int | None = None) -> bool:
    """Wait until ``pid`` has exited (gone, or a zombie of a parent we cannot reap)."""
    deadline = time.monotonic() + timeout
    while True:
        _reap_if_child(pid)
        if not _pid_alive(pid):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if pidfd is not None:
            # A pidfd becomes readable when the process exits.
            select.select([pidfd], [], [], min(remaining, 0.5))
        else:
            time.sleep(min(remaining, 0.05))


def _signal_pid(pid: int, pidfd: int | None, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)


def stop_recorded_pid(name: str, pid: int, argv: Sequence[str], timeout: float) -> bool:
    """SIGTERM (then SIGKILL) ``pid`` if it still runs ``argv``; True when it was stopped.

    A pidfd pins the process between the cmdline check and the signal, so a pid
    reused by an unrelated process in between is never signalled.
    """
    pidfd: int | None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        logger.info("%s: recorded pid %d is not running", name, pid)
        return False
    except (AttributeError, OSError):
        pidfd = None
    try:
        cmdline = _read_cmdline(pid)
        if cmdline != list(argv):
            if cmdline is None:
                logger.info("%s: recorded pid %d is not running", name, pid)
            else:
                logger.warning(
                    "%s: pid %d now runs %r, not the recorded %r; leaving it alone",
                    name,
                    pid,
                    cmdline,
                    list(argv),
                )
            return False
        logger.info("%s: stopping pid %d", name, pid)
        _signal_pid(pid, pidfd, signal.SIGTERM)
        if not _wait_pid_gone(pid, timeout, pidfd):
            logger.warning("%s: pid %d ignored SIGTERM for %.1f s, killing it", name, pid, timeout)
            _signal_pid(pid, pidfd, signal.SIGKILL)
            if not _wait_pid_gone(pid, _KILL_WAIT, pidfd):
                raise HarnessError(f"{name}: pid {pid} survived SIGKILL")
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP ``port``; None when /proc/net/tcp cannot be read."""
    inodes: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A = LISTEN
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(fields[9])
    return inodes if readable else None


def _pid_owns_listener(pid: int, port: int) -> bool:
    """True when ``pid`` holds the socket listening on ``port`` (True if /proc cannot tell)."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return True
    if not inodes:
        return False
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except PermissionError:
        return True
    except OSError:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd) in wanted:
                return True
    return False


def _log_tail(path: Path, start_offset: int = 0, max_lines: int = 40) -> str:
    """The last lines of ``path`` written after ``start_offset``."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(start_offset, size - 16384))
            data = fh.read()
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    lines = data.decode(errors="replace").splitlines()[-max_lines:]
    return "\n".join(lines) if lines else "(log is empty)"


# --------------------------------------------------------------------------- managed service

_live_lock = threading.Lock()
_live_services: dict[int, ManagedService] = {}


def _stop_live_services() -> None:
    """atexit hook: stop services that were started without detach by this process."""
    with _live_lock:
        services = list(_live_services.values())
    for service in services:
        if service._owner_pid != os.getpid():  # a forked child must not stop its parent's services
            continue
        try:
            service.stop(timeout=5.0)
        except Exception:
            logger.exception("stopping %s at exit failed", service.info.name)


atexit.register(_stop_live_services)


Probe = Callable[[str, int], bool]
AfterReady = Callable[[ServiceInfo], None]


class ManagedService:
    """One service process started by the harness.

    Created and started by :func:`start_mosquitto`, :func:`start_influxdb` and
    :func:`start_victoria_metrics`.  ``info`` describes the running process;
    after :meth:`restart` it carries the new pid (same port, same data dir).
    Usable as a context manager that stops the service on exit.
    """

    info: ServiceInfo

    def __init__(
        self,
        *,
        name: str,
        argv: Sequence[str],
        host: str,
        port: int,
        data_dir: Path,
        log_file: Path,
        probe: Probe,
        start_timeout: float,
        after_ready: AfterReady | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """Describe a service; it is not started until :meth:`start` is called."""
        self.info = ServiceInfo(
            name=name, host=host, port=port, pid=0, data_dir=data_dir, log_file=log_file
        )
        self._argv = tuple(argv)
        self._probe = probe
        self._after_ready = after_ready
        self._start_timeout = start_timeout
        self._env = dict(env) if env is not None else None
        self._cwd = cwd if cwd is not None else log_file.parent
        self._popen: subprocess.Popen[bytes] | None = None
        self._detached = False
        self._owner_pid = os.getpid()
        self._start_listeners: list[Callable[[ManagedService], None]] = []

    @property
    def argv(self) -> tuple[str, ...]:
        """The exact command line the service runs with."""
        return self._argv

    @property
    def returncode(self) -> int | None:
        """Exit code of the last process once it has exited, else None."""
        return None if self._popen is None else self._popen.returncode

    def __repr__(self) -> str:
        """Short description with name, url and pid."""
        return f"<ManagedService {self.info.name} {self.info.url} pid={self.info.pid}>"

    def __enter__(self) -> ManagedService:
        """Return self; the service is already started."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the service."""
        self.stop()

    def start(self) -> None:
        """Start the process and wait until it answers; raises :class:`ServiceStartError`.

        Does nothing when the process is already running.
        """
        if self.is_running():
            return
        self._reap()
        name, host, port, log_file = (
            self.info.name,
            self.info.host,
            self.info.port,
            self.info.log_file,
        )
        log_file.parent.mkdir(parents=True, exist_ok=True)
        offset = log_file.stat().st_size if log_file.exists() else 0
        with log_file.open("ab") as log:
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            banner = f"---- lifeline harness: starting {name} on {host}:{port} at {stamp} ----\n"
            log.write(banner.encode())
            log.flush()
            self._popen = subprocess.Popen(
                list(self._argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._cwd,
                env=self._env,
                start_new_session=True,
                close_fds=True,
            )
        self.info = replace(self.info, pid=self._popen.pid)
        if not self._detached:
            with _live_lock:
                _live_services[id(self)] = self
        logger.info("%s: started pid %d on %s:%d", name, self.info.pid, host, port)
        try:
            self._wait_ready(offset)
            if self._after_ready is not None:
                self._after_ready(self.info)
        except BaseException:
            self._kill_now()
            raise
        logger.info("%s: ready at %s (pid %d)", name, self.info.url, self.info.pid)
        for listener in list(self._start_listeners):
            listener(self)

    def _wait_ready(self, log_offset: int) -> None:
        popen = self._popen
        assert popen is not None
        name, host, port = self.info.name, self.info.host, self.info.port
        deadline = time.monotonic() + self._start_timeout
        delay = 0.05
        while True:
            code = popen.poll()
            if code is not None:
                tail = _log_tail(self.info.log_file, log_offset)
                message = (
                    f"{name} exited with code {code} before answering on {host}:{port}; "
                    f"tail of {self.info.log_file}:\n{tail}"
                )
                if "address already in use" in tail.lower():
                    raise _PortInUseError(message)
                raise ServiceStartError(message)
            # Ready only when *our* process holds the listening socket: a probe answered by
            # some other server on the same port (e.g. a system broker) does not count.
            if _pid_owns_listener(popen.pid, port) and self._probe(host, port):
                return
            if time.monotonic() >= deadline:
                tail = _log_tail(self.info.log_file, log_offset)
                raise ServiceStartError(
                    f"{name} (pid {popen.pid}) did not answer on {host}:{port} within "
                    f"{self._start_timeout:.0f} s; tail of {self.info.log_file}:\n{tail}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _kill_now(self) -> None:
        popen = self._popen
        if popen is not None and popen.poll() is None:
            popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(_KILL_WAIT)
        self._forget()

    def _reap(self) -> None:
        if self._popen is not None:
            self._popen.poll()

    def _forget(self) -> None:
        with _live_lock:
            _live_services.pop(id(self), None)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process this object started, SIGKILL it after ``timeout``; idempotent.

        Returns once the process has exited and been reaped.
        """
        popen = self._popen
        if popen is None:
            return
        name, pid = self.info.name, popen.pid
        if popen.poll() is None:
            logger.info("%s: stopping pid %d", name, pid)
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s: pid %d ignored SIGTERM for %.1f s, killing it", name, pid, timeout
                )
                popen.kill()
                try:
                    popen.wait(_KILL_WAIT)
                except subprocess.TimeoutExpired as exc:
                    raise HarnessError(f"{name}: pid {pid} survived SIGKILL") from exc
            logger.info("%s: pid %d exited with code %s", name, pid, popen.returncode)
        else:
            logger.info("%s: pid %d had already exited with code %s", name, pid, popen.returncode)
        self._forget()

    def restart(self) -> None:
        """Stop, then start again on the same port with the same data dir; ``info.pid`` changes."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        """True while the started process has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def detach(self) -> None:
        """Let the process outlive this Python process (it is no longer stopped at exit)."""
        self._detached = True
        self._forget()


def start_service(build: Callable[[int], ManagedService], port: int | None) -> ManagedService:
    """Build and start a service; with an auto-chosen port, retry when the port got taken."""
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        service = build(port if port is not None else free_port())
        try:
            service.start()
        except _PortInUseError:
            if attempt >= attempts:
                raise
            logger.warning(
                "%s: port %d was taken before the service bound it, trying another",
                service.info.name,
                service.info.port,
            )
            continue
        return service
    raise AssertionError("unreachable")  # pragma: no cover


def prepare_dir(run_dir: Path, name: str) -> Path:
    base = Path(run_dir).resolve() / name
    base.mkdir(parents=True, exist_ok=True)
    return base


# --------------------------------------------------------------------------- mosquitto


def http_probe(path: str, status: int) -> Probe:
    def probe(host: str, port: int) -> bool:
        try:
            response = httpx.get(f"http://{host}:{port}{path}", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == status

    return probe
