"""``lifeline dlq list``: what ingest dead-lettered, and why."""

from __future__ import annotations

import argparse

import orjson

from ingest.deadletter import DeadLetterStore, Reason
from lifeline.commands.common import settings_from
from lifeline.db import open_database


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dlq`` command."""
    p = sub.add_parser("dlq", help="inspect dead-lettered messages")
    dsub = p.add_subparsers(dest="dlq_command", required=True)
    ls = dsub.add_parser("list", help="list dead letters, newest first")
    ls.add_argument("--reason", choices=[r.value for r in Reason])
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_command)


def list_command(args: argparse.Namespace) -> int:
    """Print dead letters."""
    settings = settings_from(args)
    store = DeadLetterStore(open_database(settings.database_url))
    rows = store.list(reason=args.reason, limit=args.limit)
    for row in rows:
        dl = row.letter
        if args.json:
            print(orjson.dumps({"id": row.id, "topic": dl.topic, "reason": dl.reason.value,
                                "detail": dl.detail, "received_at_ns": dl.received_at_ns,
                                "payload": dl.payload.decode("utf-8", "replace")}).decode())
        else:
            print(f"{row.id:>6} {dl.reason.value:<15} {dl.topic:<40} {dl.detail}")
    return 0
