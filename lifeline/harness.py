"""Service harness: start, stop and restart Mosquitto, InfluxDB 1.x and VictoriaMetrics locally.

The harness runs the Debian-packaged binaries as child processes on free loopback
ports, each with its own configuration, data directory and log file under a run
directory.  It is used by the integration tests (see ``tests/harness_fixtures.py``)
and by ``lifeline services up|status|down``.

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

import atexit
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

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
    "start_influxdb",
    "start_mosquitto",
    "start_victoria_metrics",
    "write_mosquitto_passwords",
]

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
_PACKAGES: Final = {
    MOSQUITTO: "mosquitto",
    INFLUXDB: "influxdb",
    VICTORIA_METRICS: "victoria-metrics",
}
_BINARIES: Final = {
    MOSQUITTO: "mosquitto",
    INFLUXDB: "influxd",
    VICTORIA_METRICS: "victoria-metrics",
}
_START_TIMEOUT: Final = {MOSQUITTO: 15.0, INFLUXDB: 30.0, VICTORIA_METRICS: 30.0}
_PORT_ATTEMPTS: Final = 3  # fresh ports tried when an auto-chosen port was taken meanwhile
_KILL_WAIT: Final = 5.0
_STATE_VERSION: Final = 1


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


def _info_to_json(info: ServiceInfo, argv: Sequence[str]) -> dict[str, Any]:
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


def _info_from_json(name: str, raw: Mapping[str, Any]) -> tuple[ServiceInfo, list[str]]:
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


def _process_matches(pid: int, argv: Sequence[str]) -> bool:
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


def _stop_recorded_pid(name: str, pid: int, argv: Sequence[str], timeout: float) -> bool:
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


def _start_service(build: Callable[[int], ManagedService], port: int | None) -> ManagedService:
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


def _prepare_dir(run_dir: Path, name: str) -> Path:
    base = Path(run_dir).resolve() / name
    base.mkdir(parents=True, exist_ok=True)
    return base


# --------------------------------------------------------------------------- mosquitto


def _mqtt_probe(host: str, port: int, ca_file: str | None = None) -> bool:
    """True when an MQTT CONNECT to host:port is answered by a CONNACK (of any reason code).

    With ``ca_file`` the connection is TLS, verified against that CA.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"lifeline-harness-probe-{secrets.token_hex(4)}",
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    if ca_file is not None:
        client.tls_set_context(ssl.create_default_context(cafile=ca_file))
    client.connect_timeout = 1.0
    answered: list[object] = []

    def on_connect(
        _client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        answered.append(reason)

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10)
    except OSError:
        return False
    try:
        deadline = time.monotonic() + 2.0
        while not answered and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
    finally:
        client.disconnect()
        client.loop(timeout=0.01)
        sock = client.socket()
        if sock is not None:
            sock.close()
    return bool(answered)


def _mosquitto_conf_value(path: Path) -> str:
    text = str(path)
    if any(ch.isspace() for ch in text):
        raise HarnessError(f"mosquitto cannot use paths with whitespace: {text!r}")
    return text


@dataclass(frozen=True)
class TlsFiles:
    """A private CA and a server certificate signed by it (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _run_tool(argv: Sequence[str], what: str, stdin: bytes | None = None) -> None:
    try:
        subprocess.run(list(argv), input=stdin, capture_output=True, check=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr.decode(errors="replace").strip()
        raise HarnessError(f"{what} failed (exit {exc.returncode}): {stderr}") from exc


def make_test_pki(directory: Path, common_name: str = LOOPBACK) -> TlsFiles:
    """Generate a throw-away CA and a server certificate for ``127.0.0.1``/``localhost``.

    Uses the ``openssl`` command line (package ``openssl``); the keys are EC P-256,
    valid for two days, written with mode 0600 under ``directory``.
    """
    openssl = find_binary("openssl", "openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run_tool([openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_cert),
               "-days", "2", "-subj", "/CN=lifeline harness test CA",
               "-addext", "basicConstraints=critical,CA:TRUE",
               "-addext", "keyUsage=critical,keyCertSign,cRLSign"], "openssl req (CA)")
    _run_tool([openssl, "req", *ec, "-keyout", str(key), "-out", str(csr),
               "-subj", f"/CN={common_name}"], "openssl req (server)")
    _run_tool([openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_cert),
               "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert), "-days", "2",
               "-extfile", str(ext)], "openssl x509 (sign)")
    for path in (ca_key, key):
        path.chmod(0o600)
    return TlsFiles(ca_cert=ca_cert, server_cert=cert, server_key=key)


def write_mosquitto_passwords(path: Path, users: Mapping[str, str]) -> Path:
    """Write a Mosquitto password file for ``users`` (name → password), hashed by
    ``mosquitto_passwd -U`` (package ``mosquitto``); the plain text never leaves the file."""
    tool = find_binary("mosquitto_passwd", _PACKAGES[MOSQUITTO])
    for name, password in users.items():
        if not name or ":" in name or "\n" in name + password:
            raise HarnessError(f"invalid user name or password for {name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(f"{name}:{password}\n" for name, password in users.items())
    _run_tool([tool, "-U", str(path)], "mosquitto_passwd -U")
    return path


def start_mosquitto(
    run_dir: Path,
    port: int | None = None,
    *,
    persistence: bool = True,
    extra_config: str = "",
    tls: TlsFiles | None = None,
    users: Mapping[str, str] | None = None,
) -> ManagedService:
    """Start Mosquitto on 127.0.0.1 (a free port unless ``port`` is given) and wait for a CONNACK.

    Writes ``run_dir/mosquitto/mosquitto.conf`` (anonymous access, persistence
    with autosave every second, unlimited queues for persistent sessions) and
    appends ``extra_config`` (e.g. ``password_file``/``acl_file`` lines).
    With ``tls`` the only listener speaks TLS with that server certificate; with
    ``users`` (name → password) a password file is written and anonymous access
    is refused.
    """
    binary = find_binary(_BINARIES[MOSQUITTO], _PACKAGES[MOSQUITTO])
    base = _prepare_dir(run_dir, MOSQUITTO)
    data_dir = base / "data"
    data_dir.mkdir(exist_ok=True)
    conf = base / "mosquitto.conf"
    log_file = base / "mosquitto.log"
    auth = ["allow_anonymous true"]
    if users is not None:
        passwd = write_mosquitto_passwords(base / "passwd", users)
        auth = ["allow_anonymous false", f"password_file {_mosquitto_conf_value(passwd)}"]
    listener_tls: list[str] = []
    if tls is not None:
        listener_tls = [f"cafile {_mosquitto_conf_value(tls.ca_cert)}",
                        f"certfile {_mosquitto_conf_value(tls.server_cert)}",
                        f"keyfile {_mosquitto_conf_value(tls.server_key)}"]
    probe: Probe = _mqtt_probe if tls is None else functools.partial(
        _mqtt_probe, ca_file=str(tls.ca_cert))

    def build(chosen: int) -> ManagedService:
        lines = [
            "# written by lifeline.harness; rewritten on every start_mosquitto()",
            f"listener {chosen} {LOOPBACK}",
            *listener_tls,
            *auth,
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {_mosquitto_conf_value(data_dir)}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            f"log_dest file {_mosquitto_conf_value(log_file)}",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto would otherwise switch to the "mosquitto" user, which
            # cannot write a private run directory.
            lines.append(f"user {pwd.getpwuid(0).pw_name}")
        text = "\n".join(lines) + "\n"
        if extra_config.strip():
            text += "\n# extra_config\n" + extra_config.rstrip("\n") + "\n"
        conf.write_text(text)
        return ManagedService(
            name=MOSQUITTO,
            argv=[binary, "-c", str(conf)],
            host=LOOPBACK,
            port=chosen,
            data_dir=data_dir,
            log_file=log_file,
            probe=probe,
            start_timeout=_START_TIMEOUT[MOSQUITTO],
            cwd=base,
        )

    return _start_service(build, port)


# --------------------------------------------------------------------------- influxdb


def _toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _http_probe(path: str, status: int) -> Probe:
    def probe(host: str, port: int) -> bool:
        try:
            response = httpx.get(f"http://{host}:{port}{path}", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == status

    return probe


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
    binary = find_binary(_BINARIES[INFLUXDB], _PACKAGES[INFLUXDB])
    base = _prepare_dir(run_dir, INFLUXDB)
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
            f"""# written by lifeline.harness; rewritten on every start_influxdb()
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
            probe=_http_probe("/ping", 204),
            start_timeout=_START_TIMEOUT[INFLUXDB],
            after_ready=_influx_create_database(database) if database else None,
            env=env,
            cwd=base,
        )

    return _start_service(build, port)


# --------------------------------------------------------------------------- victoria-metrics


def start_victoria_metrics(run_dir: Path, port: int | None = None) -> ManagedService:
    """Start VictoriaMetrics on 127.0.0.1 and wait for ``GET /health`` → 200.

    It serves the InfluxDB v2 write API at ``/api/v2/write`` and exports raw
    samples at ``/api/v1/export``.  Retention is 100 years and the response cache
    is off, so tests can write old timestamps and read them back at once.
    """
    binary = find_binary(_BINARIES[VICTORIA_METRICS], _PACKAGES[VICTORIA_METRICS])
    base = _prepare_dir(run_dir, VICTORIA_METRICS)
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
            probe=_http_probe("/health", 200),
            start_timeout=_START_TIMEOUT[VICTORIA_METRICS],
            cwd=base,
        )

    return _start_service(build, port)


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
            elif _stop_recorded_pid(name, info.pid, argv, timeout):
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
            name: (info, _process_matches(info.pid, argv))
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
            return {name: _info_from_json(name, entry) for name, entry in raw["services"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HarnessError(f"malformed state file {self.state_file}: {exc!r}") from exc

    def _write_state(self) -> None:
        state = {
            "version": _STATE_VERSION,
            "detached": self._detached,
            "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "services": {
                name: _info_to_json(service.info, service.argv)
                for name, service in self.services.items()
            },
        }
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)
