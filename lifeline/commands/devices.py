"""``lifeline devices import|export|list|mqtt-acl``: the device registry from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from devices.catalogue import Catalogue
from devices.errors import DevicesError
from devices.inventory import device_row, read_file, write_csv, write_json
from devices.mqttacl import write_mqtt_auth
from devices.store import DeviceFilter, DeviceStore
from lifeline.commands.common import CommandError, err, settings_from
from lifeline.db import DatabaseError, open_database
from lifeline.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``devices`` command."""
    p = sub.add_parser("devices", help="device registry: import, export, list, MQTT ACL")
    dsub = p.add_subparsers(dest="devices_command", required=True)
    imp = dsub.add_parser("import", help="import an inventory file (.csv or .json)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--skip-invalid", action="store_true",
                     help="import the valid rows even when some rows are bad")
    imp.add_argument("--dry-run", action="store_true", help="validate only")
    imp.add_argument("--encoding", default="utf-8-sig",
                     help="file encoding (default utf-8, with or without BOM; e.g. gb18030)")
    imp.add_argument("--format", choices=["csv", "json"], default=None,
                     help="default: from the file extension")
    imp.set_defaults(func=import_command)
    exp = dsub.add_parser("export", help="export every device (.csv or .json; '-' = stdout)")
    exp.add_argument("file")
    exp.add_argument("--format", choices=["csv", "json"], default=None)
    exp.set_defaults(func=export_command)
    ls = dsub.add_parser("list", help="list devices")
    for key in ("type", "grid", "district", "unit"):
        ls.add_argument(f"--{key}")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_command)
    acl = dsub.add_parser("mqtt-acl", help="write a Mosquitto password file and ACL")
    acl.add_argument("--out", type=Path, required=True,
                     help="directory for passwd, acl and credentials.csv")
    acl.add_argument("--service-user", default=None,
                     help="the service's MQTT user (default: mqtt.username or lifeline-serve)")
    acl.set_defaults(func=acl_command)


def _catalogue(settings: Settings) -> Catalogue:
    catalogue = Catalogue.builtin()
    if settings.devices.catalogue:
        catalogue = Catalogue.load(settings.devices.catalogue, catalogue)
    return catalogue


def _store(settings: Settings) -> DeviceStore:
    try:
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        return DeviceStore(open_database(settings.database_url))
    except (DatabaseError, OSError) as exc:
        raise CommandError(f"database: {exc}", code=3) from exc


def import_command(args: argparse.Namespace) -> int:
    """Validate every row; import all (or with --skip-invalid the valid ones)."""
    settings = settings_from(args)
    try:
        parsed = read_file(args.file, _catalogue(settings), encoding=args.encoding,
                           fmt=args.format)
    except DevicesError as exc:
        raise CommandError(str(exc), code=1) from exc
    for problem in parsed.problems:
        err(f"{args.file}: {problem}")
    if parsed.problems and not args.skip_invalid:
        raise CommandError(
            f"{len(parsed.problems)} of {parsed.rows} rows are bad; nothing imported "
            "(fix them, or use --skip-invalid to import the valid rows)", code=1)
    if args.dry_run:
        print(f"{len(parsed.devices)} valid rows, {len(parsed.problems)} bad; dry run: "
              "nothing imported")
        return 0
    try:
        counts = _store(settings).upsert_many(parsed.devices)
    except DevicesError as exc:
        raise CommandError(str(exc), code=1) from exc
    print(f"imported {len(parsed.devices)} devices: {counts.created} created, "
          f"{counts.updated} updated, {counts.unchanged} unchanged"
          + (f"; {len(parsed.problems)} bad rows skipped" if parsed.problems else ""))
    return 0


def export_command(args: argparse.Namespace) -> int:
    """Write every (undeleted) device; ``import`` reads the file back unchanged."""
    settings = settings_from(args)
    devices = _store(settings).all()
    fmt = args.format or ("json" if str(args.file).lower().endswith(".json") else "csv")
    writer = write_json if fmt == "json" else write_csv
    if args.file == "-":
        writer(sys.stdout, devices)
        return 0
    path = Path(args.file)
    with path.open("w", newline="", encoding="utf-8") as handle:
        count = writer(handle, devices)
    err(f"exported {count} devices to {path}")
    return 0


def list_command(args: argparse.Namespace) -> int:
    """Print devices matching the filters."""
    settings = settings_from(args)
    filters = DeviceFilter(type=args.type, grid=args.grid, district=args.district,
                           unit=args.unit)
    devices, total = _store(settings).query(filters, limit=max(1, min(args.limit, 10_000)))
    for d in devices:
        if args.json:
            print(orjson.dumps(device_row(d)).decode())
        else:
            print(f"{d.id:<24} {d.type:<15} {d.grid:<10} {d.district:<12} {d.unit:<16} {d.name}")
    if not args.json:
        err(f"{len(devices)} of {total} devices")
    return 0


def acl_command(args: argparse.Namespace) -> int:
    """Write passwd, acl and credentials.csv for every enabled device."""
    settings = settings_from(args)
    user = args.service_user or settings.mqtt.username or "lifeline-serve"
    ids = [d.id for d in _store(settings).all(enabled_only=True)]
    try:
        files = write_mqtt_auth(args.out, ids, prefix=settings.mqtt.prefix, service_user=user,
                                service_password=settings.mqtt.password.get_secret_value())
    except DevicesError as exc:
        raise CommandError(str(exc), code=1) from exc
    print(f"wrote {files.users} users ({files.new_users} new passwords): "
          f"{files.password_file}, {files.acl_file}, {files.credentials_file} (keep private)")
    print("mosquitto.conf:")
    print("  allow_anonymous false")
    print(f"  password_file {files.password_file.resolve()}")
    print(f"  acl_file {files.acl_file.resolve()}")
    print(f"service settings: mqtt.username = \"{user}\", mqtt.password from "
          f"{files.credentials_file}")
    return 0
