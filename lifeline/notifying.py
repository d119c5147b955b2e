"""Wiring of :mod:`alerts.notify` from the settings: channels, routing table, renderer,
acknowledge links and the channel worker (docs/notifications.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from alerts.delivery.outbox import DeliveryConfig
from alerts.notify.channels import (
    DingTalkChannel,
    EmailChannel,
    FeishuChannel,
    SmsChannel,
    WeComChannel,
)
from alerts.notify.links import LinkSigner
from alerts.notify.model import Channel
from alerts.notify.ratelimit import DEFAULT_LIMITS, RateLimiter
from alerts.notify.render import Renderer
from alerts.notify.routing import NotifyRoute, Router, parse_quiet
from alerts.notify.worker import NotifyWorker
from devices.registry import DeviceLookup
from lifeline.notify_settings import ChannelSettings, NotifySettings, parse_rate


def build_channel(c: ChannelSettings) -> Channel:
    """The channel a ``[[notify.channels]]`` entry describes."""
    url = c.url.get_secret_value()
    secret = c.secret.get_secret_value()
    if c.type == "wecom":
        return WeComChannel(c.name, url, timeout=c.timeout)
    if c.type == "dingtalk":
        return DingTalkChannel(c.name, url, secret, c.keyword, timeout=c.timeout)
    if c.type == "feishu":
        return FeishuChannel(c.name, url, secret, c.keyword, timeout=c.timeout)
    if c.type == "email":
        return EmailChannel(c.name, c.host, c.port, c.sender, c.to, security=c.security,
                            username=c.username, password=c.password.get_secret_value(),
                            timeout=c.timeout)
    return SmsChannel(c.name, url, method=c.method, headers=c.headers, body=c.body,
                      phones=c.phones, secret=secret, timeout=c.timeout)


def limiter(c: ChannelSettings) -> RateLimiter:
    """The channel's send limits: ``rate_limit`` or its platform's documented ones."""
    windows = [parse_rate(r) for r in c.rate_limit] if c.rate_limit else DEFAULT_LIMITS[c.type]
    return RateLimiter(windows)


def router(n: NotifySettings) -> Router:
    """The routing table."""
    return Router([NotifyRoute(
        channels=tuple(r.channels), events=frozenset(r.events), min_severity=r.min_severity,
        device_types=tuple(r.device_types), grids=tuple(r.grids),
        districts=tuple(r.districts), units=tuple(r.units), quiet=parse_quiet(r.quiet_hours),
        quiet_override=r.quiet_override,
        after_ns=r.after.ns, after=r.after)
        for r in n.routes], n.timezone)


def link_signer(n: NotifySettings) -> LinkSigner | None:
    """Signs acknowledge links (None without ``link_secret``)."""
    secret = n.link_secret.get_secret_value()
    if not secret:
        return None
    return LinkSigner(secret, n.public_url, n.link_ttl.ns // 10**9)


def renderer(n: NotifySettings, registry: DeviceLookup | None) -> Renderer:
    """The message renderer (links to cases and acknowledge links when configured)."""
    signer = link_signer(n)
    case_url = n.case_url or (f"{n.public_url.rstrip('/')}/api/v1/cases/{{id}}"
                              if n.public_url else "")

    def ack(kind: str, object_id: int) -> str:
        assert signer is not None
        return signer.link(kind, object_id, int(time.time()))

    return Renderer(registry, timezone=n.timezone, template_dir=n.template_dir,
                    case_url=case_url, ack_link=ack if signer is not None else None)


@dataclass(slots=True)
class NotifyRuntime:
    """The routing table (for the pipeline) and the worker (for the service)."""

    router: Router
    worker: NotifyWorker


def notify_runtime(n: NotifySettings, engine: Engine, registry: DeviceLookup | None,
                   guard: Callable[[], None] | None = None) -> NotifyRuntime | None:
    """Everything notifications need, or None without channels (``guard``: see
    :class:`~alerts.notify.worker.NotifyWorker`)."""
    if not n.channels:
        return None
    config = DeliveryConfig(max_age_ns=n.max_age.ns, base_delay_s=n.base_delay,
                            max_delay_s=n.max_delay)
    worker = NotifyWorker(engine, renderer(n, registry),
                          [(build_channel(c), limiter(c), c.max_batch) for c in n.channels],
                          config=config, guard=guard)
    return NotifyRuntime(router(n), worker)
