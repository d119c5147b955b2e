"""``lifeline status [--json]``: the nodes of the service group, the leader, its fencing
token, the lease's age, the last takeover and each node's API URL (where the others
forward writes), read from the service database."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from lifeline.commands.common import CommandError, settings_from
from lifeline.db import DatabaseError, open_database
from lifeline.leadership import NS, LeaderLease, LeaseError, default_node_id
from lifeline.redaction import mask_urls


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``status`` command."""
    p = sub.add_parser("status", help="cluster status: nodes, leader, lease, last takeover")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=status_command)


def cluster_status(lease: LeaderLease) -> dict[str, Any]:
    """The status document of ``lease``'s group (times in ns, ages in seconds)."""
    state = lease.read()
    nodes = lease.nodes()
    now_ns = state.now_ns if state is not None else None
    leader: dict[str, Any] | None = None
    if state is not None and state.held:
        leader = {"node_id": state.holder, "token": state.token,
                  "lease_age_s": (state.now_ns - state.acquired_ns) / NS,
                  "since_renewal_s": (state.now_ns - state.renewed_ns) / NS,
                  "expires_in_s": (state.expires_ns - state.now_ns) / NS}
    takeovers = [n.last_takeover_ns for n in nodes if n.last_takeover_ns is not None]
    return {
        "group": lease.group,
        "leader": leader,
        "token": state.token if state is not None else 0,
        "last_takeover_ns": max(takeovers) if takeovers else None,
        "nodes": [{"node_id": n.node_id, "host": n.host, "pid": n.pid, "role": n.role,
                   "last_seen_ns": n.last_seen_ns, "started_ns": n.started_ns,
                   "last_takeover_ns": n.last_takeover_ns,
                   "api_url": None if n.api_url is None else mask_urls(n.api_url),
                   "seen_ago_s": None if now_ns is None else (now_ns - n.last_seen_ns) / NS}
                  for n in nodes],
    }


def status_command(args: argparse.Namespace) -> int:
    """Print the cluster status."""
    settings = settings_from(args)
    try:
        engine = open_database(settings.database_url)
    except DatabaseError as exc:
        raise CommandError(str(exc)) from exc
    lease = LeaderLease(engine, settings.ha.group, settings.ha.node_id or default_node_id(),
                        settings.ha.lease.ns)
    try:
        doc = cluster_status(lease)
    except LeaseError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        engine.dispose()
    if args.json:
        print(orjson.dumps(doc).decode())
        return 0
    leader = doc["leader"]
    print(f"group:  {doc['group']}" + ("" if settings.ha.enabled else "  (ha.enabled = false)"))
    if leader is None:
        print(f"leader: none (last token {doc['token']})")
    else:
        print(f"leader: {leader['node_id']}  token {leader['token']}  "
              f"lease age {leader['lease_age_s']:.1f}s  "
              f"renewed {leader['since_renewal_s']:.1f}s ago  "
              f"expires in {leader['expires_in_s']:.1f}s")
    if doc["last_takeover_ns"] is not None:
        print(f"last takeover: {_iso(doc['last_takeover_ns'])}")
    for n in doc["nodes"]:
        seen = "" if n["seen_ago_s"] is None else f"  seen {n['seen_ago_s']:.1f}s ago"
        api = f"  api {n['api_url']}" if n["api_url"] else "  api -"
        print(f"  {n['node_id']:<32} {n['role']:<8} {n['host']} pid {n['pid']}{seen}{api}")
    return 0


def _iso(ns: int) -> str:
    from datetime import UTC, datetime  # noqa: PLC0415

    return datetime.fromtimestamp(ns / NS, UTC).isoformat(timespec="seconds")
