"""``lifeline devices import|export|list|mqtt-acl``: the device registry from the command line."""

from __future__ import annotations

import argparse
import codecs
import sys
from pathlib import Path

import orjson

from devices.catalogue import Catalogue
from devices.errors import DevicesError
from devices.inventory import device_row, read_file, write_csv, write_json
from devices.mqttacl import DEFAULT_LISTENERS, ListenerTls, write_mqtt_auth
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
    exp.add_argument("--excel", action="store_true",
                     help="CSV for Excel: UTF-8 with a byte-order mark, so Chinese names open "
                          "right (import reads it back)")
    exp.set_defaults(func=export_command)
    ls = dsub.add_parser("list", help="list devices (one page; 'showing X-Y of N' on stderr)")
    for key in ("type", "grid", "district", "unit"):
        ls.add_argument(f"--{key}")
    page = ls.add_mutually_exclusive_group()
    page.add_argument("--limit", type=int, default=100,
                      help=f"page size (default 100, at most {MAX_PAGE})")
    page.add_argument("--all", action="store_true", help="every matching device")
    ls.add_argument("--offset", type=int, default=0, help="devices to skip (paging)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=list_command)
    acl = dsub.add_parser("mqtt-acl", help="write a Mosquitto password file, ACL and "
                                           "listener configuration")
    acl.add_argument("--out", type=Path, required=True,
                     help="directory for passwd, acl, credentials.csv and mosquitto.conf")
    acl.add_argument("--service-user", default=None,
                     help="the service's MQTT user (default: mqtt.username or lifeline-serve)")
    acl.add_argument("--listener", action="append", default=None, metavar="'PORT [ADDRESS]'",
                     help="a listener of mosquitto.conf (repeatable; default: 1883)")
    acl.add_argument("--certfile", type=Path, default=None,
                     help="server certificate: the listeners speak TLS only")
    acl.add_argument("--keyfile", type=Path, default=None, help="its private key")
    acl.add_argument("--cafile", type=Path, default=None, help="the CA chain (optional)")
    acl.set_defaults(func=acl_command)


MAX_PAGE = 10_000
ALL_PAGE = 1000  # --all reads the registry this many devices at a time
TABLE = "{:<24} {:<15} {:<10} {:<12} {:<16} {}"


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
        parsed = read_file(args.file, Catalogue.with_file(settings.devices.catalogue),
                           encoding=args.encoding, fmt=args.format)
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
    err(f"{args.file}: {parsed.rows} rows read; importing {len(parsed.devices)} devices")
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
    if args.excel and fmt != "csv":
        raise CommandError("--excel is for CSV", code=2)
    writer = write_json if fmt == "json" else write_csv
    if args.file == "-":
        if args.excel:
            sys.stdout.flush()
            sys.stdout.buffer.write(codecs.BOM_UTF8)
        writer(sys.stdout, devices)
        return 0
    path = Path(args.file)
    # utf-8-sig: Excel reads a BOM-less CSV in the local code page (GBK garbles Chinese)
    with path.open("w", newline="", encoding="utf-8-sig" if args.excel else "utf-8") as handle:
        count = writer(handle, devices)
    err(f"exported {count} devices to {path}")
    return 0


def list_command(args: argparse.Namespace) -> int:
    """Print one page (or ``--all``) of the devices matching the filters; the range shown
    and the total go to stderr, so ``--json`` output stays one object per line."""
    if not 1 <= args.limit <= MAX_PAGE:
        raise CommandError(f"--limit must be 1..{MAX_PAGE} (or --all)", code=2)
    if args.offset < 0:
        raise CommandError("--offset must be >= 0", code=2)
    settings = settings_from(args)
    filters = DeviceFilter(type=args.type, grid=args.grid, district=args.district,
                           unit=args.unit)
    store = _store(settings)
    if not args.json:
        print(TABLE.format("ID", "TYPE", "GRID", "DISTRICT", "UNIT", "NAME"))
    offset, shown, total = args.offset, 0, 0
    while True:
        size = ALL_PAGE if args.all else args.limit
        devices, total = store.query(filters, offset=offset, limit=size)
        for d in devices:
            if args.json:
                print(orjson.dumps(device_row(d)).decode())
            else:
                print(TABLE.format(d.id, d.type, d.grid, d.district, d.unit, d.name))
        shown += len(devices)
        offset += len(devices)
        if not args.all or len(devices) < size:
            break
    if shown:
        err(f"showing {args.offset + 1}\u2013{args.offset + shown} of {total} devices")
    else:
        err(f"showing 0 of {total} devices")
    if not args.all and args.offset + shown < total:
        err(f"more: --offset {args.offset + shown}, or --all")
    return 0


def acl_command(args: argparse.Namespace) -> int:
    """Write passwd, acl, credentials.csv and mosquitto.conf for every enabled device."""
    settings = settings_from(args)
    user = args.service_user or settings.mqtt.username or "lifeline-serve"
    if (args.certfile is None) != (args.keyfile is None) or (
            args.cafile is not None and args.certfile is None):
        raise CommandError("--certfile and --keyfile go together (--cafile needs them)", code=2)
    tls = (ListenerTls(args.certfile, args.keyfile, args.cafile)
           if args.certfile is not None and args.keyfile is not None else None)
    ids = [d.id for d in _store(settings).all(enabled_only=True)]
    try:
        files = write_mqtt_auth(args.out, ids, prefix=settings.mqtt.prefix, service_user=user,
                                service_password=settings.mqtt.password.get_secret_value(),
                                listeners=args.listener or DEFAULT_LISTENERS, tls=tls)
    except DevicesError as exc:
        raise CommandError(str(exc), code=1) from exc
    print(f"wrote {files.users} users ({files.new_users} new passwords): "
          f"{files.password_file}, {files.acl_file}, {files.credentials_file} (keep private)")
    print(f"broker configuration: {files.config_file.resolve()} (include it from "
          "mosquitto.conf, e.g. in conf.d; define no other listener for devices)")
    print(f"service settings: mqtt.username = \"{user}\", mqtt.client_id = \"{user}\", "
          f"mqtt.password from {files.credentials_file}")
    if settings.mqtt.client_id != user:
        err(f"note: the broker uses the user name as client id, so the service's session is "
            f"\"{user}\", not mqtt.client_id \"{settings.mqtt.client_id}\": set "
            f"mqtt.client_id = \"{user}\" (messages queued for the old client id are not "
            "delivered to the new one)")
    return 0
