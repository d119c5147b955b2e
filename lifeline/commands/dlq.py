"""``lifeline dlq list|show|replay``: what ingest dead-lettered, why, and trying it again."""

from __future__ import annotations

import argparse

import orjson

from ingest.deadletter import DeadLetterStore, Reason, StoredDeadLetter
from lifeline.commands.common import CommandError, settings_from
from lifeline.db import open_database


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dlq`` command."""
    p = sub.add_parser("dlq", help="inspect and replay dead-lettered messages")
    dsub = p.add_subparsers(dest="dlq_command", required=True)
    ls = dsub.add_parser("list", help="list dead letters, newest first")
    ls.add_argument("--reason", choices=[r.value for r in Reason])
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--before", type=int, help="only letters with an id below this (paging)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=list_command)
    show = dsub.add_parser("show", help="one dead letter with its whole payload")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_command)
    rp = dsub.add_parser(
        "replay",
        help="mark dead letters for replay: the running service decodes them again",
        description="Marks letters; `lifeline serve` takes them within a second and sends "
        "them through the same decoding path. Letters that fail again are dead-lettered anew. "
        "Lines InfluxDB refused (write_rejected) and letters whose payload was cut (an "
        "oversized message over ingest.max_payload_bytes) cannot be replayed.",
    )
    which = rp.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", dest="ids", help="repeatable")
    which.add_argument("--reason", choices=[r.value for r in Reason if r.value not in (
        Reason.WRITE_REJECTED.value, Reason.DLQ_OVERFLOW.value)])
    rp.add_argument("--limit", type=int, default=10_000, help="with --reason: newest N")
    rp.set_defaults(func=replay_command)


def _store(args: argparse.Namespace) -> DeadLetterStore:
    settings = settings_from(args)
    return DeadLetterStore(open_database(settings.database_url))


def _as_json(row: StoredDeadLetter) -> dict[str, object]:
    dl = row.letter
    return {"id": row.id, "topic": dl.topic, "reason": dl.reason.value, "detail": dl.detail,
            "received_at_ns": dl.received_at_ns, "payload_size": row.payload_size,
            "truncated": row.truncated, "payload": dl.payload.decode("utf-8", "replace")}


def list_command(args: argparse.Namespace) -> int:
    """Print dead letters."""
    if args.limit < 1:
        raise CommandError("--limit must be at least 1", code=2)
    rows = _store(args).list(reason=args.reason, limit=args.limit, before_id=args.before)
    for row in rows:
        dl = row.letter
        if args.json:
            print(orjson.dumps(_as_json(row)).decode())
        else:
            print(f"{row.id:>6} {dl.reason.value:<15} {dl.topic:<40} {dl.detail}")
    return 0


def show_command(args: argparse.Namespace) -> int:
    """Print one dead letter, payload included."""
    row = _store(args).get(args.id)
    if row is None:
        raise CommandError(f"no dead letter with id {args.id}")
    if args.json:
        print(orjson.dumps(_as_json(row)).decode())
        return 0
    dl = row.letter
    print(f"id:          {row.id}\ntopic:       {dl.topic}\nreason:      {dl.reason.value}\n"
          f"detail:      {dl.detail}\nreceived_at: {dl.received_at_ns}\n"
          f"payload ({len(dl.payload)} bytes"
          + (f" of {row.payload_size} received, cut: not replayable" if row.truncated else "")
          + "):")
    try:
        print(dl.payload.decode("utf-8"))
    except UnicodeDecodeError:
        print(repr(dl.payload))
    return 0


def replay_command(args: argparse.Namespace) -> int:
    """Mark letters for replay by the running service."""
    marked = _store(args).request_replay(ids=args.ids or (), reason=args.reason,
                                         limit=args.limit)
    print(f"{marked} dead letters marked for replay; the running service takes them "
          "within a second")
    return 0 if marked else 1
