"""Mosquitto credentials, ACL and listener configuration for the registry: each device
may publish only under ``{prefix}/{id}/...`` and read nothing; the service account may
read every device topic; every client's id is its user name, so no credential can take
over another identity's session (the service's persistent session in particular).

Passwords are hashed like ``mosquitto_passwd`` does (``$7$``: PBKDF2-SHA512, 101
iterations, 12-byte salt), so no Mosquitto tool is needed to generate the files.
The plain passwords go to a credentials CSV (mode 0600) for provisioning; a later
run reuses them, so only new devices get new passwords.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devices.errors import DevicesError
from devices.model import valid_device_id

ITERATIONS: Final = 101
_USER_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# ``listener`` value: a port, optionally a bind address or host name
_LISTENER_RE: Final = re.compile(r"^[0-9]{1,5}( [A-Za-z0-9_.:%-]{1,253})?$")
DEFAULT_LISTENERS: Final = ("1883",)


class AclError(DevicesError):
    """The MQTT credentials or ACL cannot be generated."""


def hash_password(password: str, *, salt: bytes | None = None,
                  iterations: int = ITERATIONS) -> str:
    """A Mosquitto 2 password hash (``$7$<iterations>$<salt>$<hash>``)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def verify_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt = base64.b64decode(parts[3])
    expected = hash_password(password, salt=salt, iterations=int(parts[2]))
    return secrets.compare_digest(expected, hashed)


def acl_text(device_ids: Iterable[str], prefix: str, service_user: str) -> str:
    """The Mosquitto ACL file."""
    lines = [
        "# written by `lifeline devices mqtt-acl`; regenerate instead of editing",
        "# the service account reads every device topic",
        f"user {service_user}",
        f"topic read {prefix}/#",
        "",
    ]
    for device_id in device_ids:
        lines += [f"user {device_id}", f"topic write {prefix}/{device_id}/#", ""]
    return "\n".join(lines)


def _conf_path(path: Path) -> str:
    text = str(path.resolve())
    if any(c.isspace() for c in text):  # Mosquitto reads a value up to white space
        raise AclError(f"{text!r}: Mosquitto cannot use a path with white space")
    return text


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """Server certificate of the generated listeners (``certfile``/``keyfile``, and the
    ``cafile`` of the chain when given)."""

    certfile: Path
    keyfile: Path
    cafile: Path | None = None


def broker_config_text(password_file: Path, acl_file: Path,
                       listeners: Sequence[str] = DEFAULT_LISTENERS,
                       tls: ListenerTls | None = None) -> str:
    """The Mosquitto configuration for the generated files: one listener block per
    ``listeners`` entry (``"PORT"`` or ``"PORT ADDRESS"``) with no anonymous access, the
    password file, the ACL and ``use_username_as_clientid true``: the broker replaces
    every client id by the user name, so a device's credentials only ever reach the
    device's own session and can never disconnect or wipe the service's persistent one.

    The options sit in each listener block, so they hold with ``per_listener_settings``
    true or false. ``use_username_as_clientid`` is a listener option (outside a block it
    would open a default listener on every interface): with no ``listeners`` the text is a
    block body to append right after the operator's own ``listener`` line. With ``tls``
    every generated listener speaks TLS only.
    """
    bad = [v for v in listeners if not _LISTENER_RE.match(v)]
    if bad:
        raise AclError(f"invalid listener {bad[0]!r} (expected PORT or 'PORT ADDRESS')")
    body: list[str] = []
    if tls is not None:
        if tls.cafile is not None:
            body.append(f"cafile {_conf_path(tls.cafile)}")
        body += [f"certfile {_conf_path(tls.certfile)}", f"keyfile {_conf_path(tls.keyfile)}"]
    body += [
        "allow_anonymous false",
        f"password_file {_conf_path(password_file)}",
        f"acl_file {_conf_path(acl_file)}",
        "# the client id is the user name: no credential can take over another",
        "# client's session (the service's persistent session in particular)",
        "use_username_as_clientid true",
    ]
    lines = ["# written by `lifeline devices mqtt-acl`; regenerate instead of editing"]
    for value in listeners:
        lines += ["", f"listener {value}", *body]
    if not listeners:
        lines += ["# the body of the listener block this text is appended to", *body]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class AclFiles:
    """What :func:`write_mqtt_auth` wrote."""

    password_file: Path
    acl_file: Path
    credentials_file: Path
    users: int
    new_users: int
    config_file: Path


def _read_credentials(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return {row["username"]: row["password"] for row in csv.DictReader(handle)
                    if row.get("username") and row.get("password")}
    except (OSError, KeyError, csv.Error) as exc:
        raise AclError(f"{path}: cannot read credentials: {exc}") from exc


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_mqtt_auth(out_dir: Path, device_ids: Iterable[str], *, prefix: str,
                    service_user: str, service_password: str = "",
                    listeners: Sequence[str] = DEFAULT_LISTENERS,
                    tls: ListenerTls | None = None) -> AclFiles:
    """Write ``passwd``, ``acl``, ``credentials.csv`` and ``mosquitto.conf`` (see
    :func:`broker_config_text`) under ``out_dir``."""
    if any(c in prefix for c in "+#") or not prefix:
        raise AclError(f"invalid topic prefix {prefix!r}")
    if not _USER_RE.match(service_user):
        raise AclError(f"invalid service user {service_user!r}")
    ids = sorted(set(device_ids))
    bad = [d for d in ids if not valid_device_id(d)]
    if bad:
        raise AclError(f"invalid device ids: {', '.join(repr(b) for b in bad[:5])}")
    if service_user in ids:
        raise AclError(f"service user {service_user!r} is also a device id")
    config = broker_config_text(out_dir / "passwd", out_dir / "acl", listeners, tls)
    out_dir.mkdir(parents=True, exist_ok=True)
    creds_path = out_dir / "credentials.csv"
    known = _read_credentials(creds_path)
    creds: dict[str, str] = {}
    new = 0
    for user in [service_user, *ids]:
        password = known.get(user, "")
        if user == service_user and service_password:
            password = service_password
        if not password:
            password = secrets.token_urlsafe(18)
            new += 1
        creds[user] = password
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["username", "password"])
    writer.writerows(creds.items())
    _write_private(creds_path, buf.getvalue())
    _write_private(out_dir / "passwd",
                   "".join(f"{u}:{hash_password(p)}\n" for u, p in creds.items()))
    (out_dir / "acl").write_text(acl_text(ids, prefix, service_user), encoding="utf-8")
    (out_dir / "mosquitto.conf").write_text(config, encoding="utf-8")
    return AclFiles(out_dir / "passwd", out_dir / "acl", creds_path, len(creds), new,
                    out_dir / "mosquitto.conf")
