"""Mosquitto for tests and tooling: configuration, TLS test PKI, password file, start."""

from __future__ import annotations

import functools
import logging
import os
import pwd
import secrets
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from devtools.procs import (
    BINARIES,
    LOOPBACK,
    MOSQUITTO,
    PACKAGES,
    START_TIMEOUT,
    HarnessError,
    ManagedService,
    Probe,
    find_binary,
    prepare_dir,
    start_service,
)

logger = logging.getLogger(__name__)


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
    tool = find_binary("mosquitto_passwd", PACKAGES[MOSQUITTO])
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
    binary = find_binary(BINARIES[MOSQUITTO], PACKAGES[MOSQUITTO])
    base = prepare_dir(run_dir, MOSQUITTO)
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
            "# written by devtools.harness; rewritten on every start_mosquitto()",
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
            start_timeout=START_TIMEOUT[MOSQUITTO],
            cwd=base,
        )

    return start_service(build, port)


# --------------------------------------------------------------------------- influxdb
