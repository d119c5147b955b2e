"""``lifeline serve``: run the service until SIGTERM / Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from devices.errors import DevicesError
from ingest.errors import IngestError
from ingest.gctuning import tune_gc_for_throughput
from lifeline.commands.common import CommandError, settings_from
from lifeline.db import DatabaseError
from lifeline.logs import setup_logging
from lifeline.service import Service, StartupError
from lifeline.settings import Settings, risky_settings, secret_values
from rules.errors import RulesError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command."""
    p = sub.add_parser("serve", help="run the ingest, rule and alert service")
    p.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    """Build the service from settings, start it, run until a signal."""
    settings = settings_from(args)
    setup_logging(args.log_level if args.log_level_given else settings.log_level,
                  settings.log_format, secret_values(settings))
    for warning in risky_settings(settings):
        log.warning("risky setting: %s", warning)
    if settings.ha.enabled:
        return _serve_ha(settings)
    try:
        service = Service(settings)
        tune_gc_for_throughput()
        service.start()
    except (StartupError, IngestError, RulesError, DevicesError, DatabaseError) as exc:
        raise CommandError(f"cannot start: {exc}", code=3) from exc
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        log.info("SIGHUP: reloading rule files")
        service.request_rules_reload()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    log.info("serving: mqtt %s:%d prefix %r, influx %s db %s",
             settings.mqtt.host, settings.mqtt.port, settings.mqtt.prefix,
             settings.influx.url, settings.influx.database)
    service.run(stop)
    return 0


def _serve_ha(settings: Settings) -> int:
    """One node of an active/standby group (lifeline.ha): API and elector; the service
    while it leads. Exits with 75 when it loses the lease."""
    from lifeline.ha import HaNode  # noqa: PLC0415 - only with [ha] enabled

    try:
        node = HaNode(settings)
    except (IngestError, RulesError, DevicesError, DatabaseError) as exc:
        raise CommandError(f"cannot start: {exc}", code=3) from exc
    tune_gc_for_throughput()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        if node.service is not None:
            log.info("SIGHUP: reloading rule files")
            node.service.request_rules_reload()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    try:
        return node.run(stop)
    except (StartupError, IngestError, RulesError, DevicesError, DatabaseError) as exc:
        raise CommandError(f"cannot start: {exc}", code=3) from exc
