"""``lifeline notify test CHANNEL``: send a sample message through one configured
notification channel (straight to the platform, not through the outbox)."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from alerts.errors import DeliveryError
from lifeline.commands.common import CommandError, settings_from
from lifeline.notifying import build_channel, renderer


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``notify`` command."""
    p = sub.add_parser("notify", help="notification channels: send a test message")
    nsub = p.add_subparsers(dest="notify_command", required=True)
    test = nsub.add_parser("test", help="send a sample alert to one channel")
    test.add_argument("channel", help="a [[notify.channels]] name")
    test.add_argument("--event", choices=["alert.firing", "alert.resolved"],
                      default="alert.firing")
    test.add_argument("--show", action="store_true",
                      help="print the rendered message, send nothing")
    test.set_defaults(func=test_command)


def sample(event: str, now_ns: int) -> dict[str, Any]:
    """A sample payload like the pipeline's (a gas alarm with its case)."""
    at = datetime.fromtimestamp(now_ns / 1e9, UTC).isoformat().replace("+00:00", "Z")
    resolved = event == "alert.resolved"
    return {
        "alert": {"id": 0, "state": "resolved" if resolved else "firing",
                  "rule": "测试告警 gas-lel-high", "severity": "critical", "device": "test-device",
                  "device_type": "gas_alarm", "grid": "TEST", "district": "测试区",
                  "unit": "测试单位", "metric": "lel", "value": 62.5, "fired": at,
                  "first_seen": at, "resolved": at if resolved else None, "case_id": None},
        "case": None,
        "notify": {"test": True},
    }


def test_command(args: argparse.Namespace) -> int:
    """Render the sample and send it once; the platform's answer decides the exit code."""
    settings = settings_from(args)
    found = [c for c in settings.notify.channels if c.name == args.channel]
    if not found:
        names = ", ".join(c.name for c in settings.notify.channels) or "none configured"
        raise CommandError(f"no channel {args.channel!r} (channels: {names})")
    message = renderer(settings.notify, None).render([(args.event,
                                                        sample(args.event, time.time_ns()))])
    if args.show:
        print(message.title)
        print(message.markdown)
        return 0
    try:
        build_channel(found[0]).send(message)
    except DeliveryError as exc:
        kind = "retryable" if exc.retryable else "permanent"
        raise CommandError(f"channel {args.channel}: {exc} ({kind})") from exc
    print(f"sent a test message to {args.channel} ({found[0].type})")
    return 0
