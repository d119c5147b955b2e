"""Mosquitto credentials and ACL for the registry: each device may publish only under
``{prefix}/{id}/...`` and read nothing; the service account may read every device topic.

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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devices.errors import DevicesError
from devices.model import valid_device_id

ITERATIONS: Final = 101
_USER_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


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


@dataclass(frozen=True, slots=True)
class AclFiles:
    """What :func:`write_mqtt_auth` wrote."""

    password_file: Path
    acl_file: Path
    credentials_file: Path
    users: int
    new_users: int


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
                    service_user: str, service_password: str = "") -> AclFiles:
    """Write ``passwd``, ``acl`` and ``credentials.csv`` under ``out_dir``."""
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
    return AclFiles(out_dir / "passwd", out_dir / "acl", creds_path, len(creds), new)
