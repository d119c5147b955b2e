"""Settings of the notification channels (``[notify]``, ``[[notify.channels]]``,
``[[notify.routes]]``): see docs/notifications.md. Part of :class:`lifeline.settings.Settings`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from common.duration import NO_DURATION, Duration, OptionalDuration
from common.severity import SEVERITY_NAMES, Severity
from common.timezone import check_timezone

ChannelType = Literal["wecom", "dingtalk", "feishu", "email", "sms"]
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,47}$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|m|min|h)\s*$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
SEVERITIES = SEVERITY_NAMES
EVENTS = ("alert.firing", "alert.resolved", "case.reported", "case.updated",
          "case.dispatched", "case.escalated", "case.closed")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_rate(text: str) -> tuple[int, float]:
    """``"20/min"``, ``"5/s"``, ``"100/10min"`` → (count, window seconds)."""
    m = _RATE.match(text)
    if not m or int(m[1]) <= 0:
        raise ValueError(f"rate {text!r}: use COUNT/WINDOW, e.g. '20/min' or '5/s'")
    unit = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}[m[3]]
    return int(m[1]), unit * (int(m[2]) if m[2] else 1)


class ChannelSettings(_Section):
    """One notification channel (a robot, a mail relay, an SMS gateway)."""

    name: str
    type: ChannelType
    url: SecretStr = SecretStr("")  # robot webhook URL (holds its key/token) or SMS gateway
    secret: SecretStr = SecretStr("")  # DingTalk/Feishu signing secret; SMS: {{ secret }}
    keyword: str = ""  # DingTalk/Feishu keyword rule: the word every message must contain
    rate_limit: list[str] = Field(default_factory=list)  # default: the platform's limits
    max_batch: int = Field(default=10, ge=1, le=50)
    timeout: float = Field(default=10.0, gt=0, le=120)
    # e-mail
    host: str = ""
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str = ""
    password: SecretStr = SecretStr("")
    sender: str = ""
    to: list[str] = Field(default_factory=list)
    # SMS gateway: the request is rendered from these templates (Jinja2)
    method: Literal["POST", "GET", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = ""
    phones: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("lower-case letters, digits, '-' and '_' (at most 48)")
        return v

    @field_validator("rate_limit")
    @classmethod
    def _rates(cls, v: list[str]) -> list[str]:
        for item in v:
            parse_rate(item)
        return v

    @model_validator(mode="after")
    def _complete(self) -> ChannelSettings:
        url = self.url.get_secret_value()
        if self.type != "email" and not url.startswith(("http://", "https://")):
            raise ValueError(f"channel {self.name}: url must start with http:// or https://")
        if self.type == "email" and not (self.host and self.sender and self.to):
            raise ValueError(f"channel {self.name}: e-mail needs host, sender and to")
        if self.type == "sms" and not (self.body or self.method == "GET"):
            raise ValueError(f"channel {self.name}: sms needs a body template")
        return self


class NotifyRouteSettings(_Section):
    """A routing row: which events of which alerts go to which channels, when."""

    channels: list[str] = Field(min_length=1)
    events: list[str] = Field(default_factory=lambda: ["alert.firing", "alert.resolved",
                                                       "case.dispatched", "case.escalated",
                                                       "case.closed"])
    min_severity: Severity = Severity.INFO
    device_types: list[str] = Field(default_factory=list)  # empty: any
    grids: list[str] = Field(default_factory=list)
    districts: list[str] = Field(default_factory=list)
    units: list[str] = Field(default_factory=list)
    quiet_hours: str = ""  # "22:00-07:00" local time: held until the quiet hours end
    quiet_override: Literal["info", "warning", "minor", "major", "critical", "none"] = "critical"
    # escalation: only if not acknowledged / accepted within this time
    after: OptionalDuration = NO_DURATION

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        for e in v:
            if e not in EVENTS:
                raise ValueError(f"unknown event {e!r} (one of {', '.join(EVENTS)})")
        return v

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, v: str) -> str:
        if v:
            parts = v.split("-")
            if len(parts) != 2 or not all(_HHMM.match(p.strip()) for p in parts):
                raise ValueError("quiet_hours: 'HH:MM-HH:MM' (local time), e.g. '22:00-07:00'")
        return v

    @field_validator("after")
    @classmethod
    def _after(cls, v: Duration) -> Duration:
        if v and not 0 < v.ns <= 7 * 86400 * 10**9:
            raise ValueError("after: a duration between 1s and 7d")
        return v


class NotifySettings(_Section):
    """Notification channels beside the dispatch webhook, their routing and ack links."""

    channels: list[ChannelSettings] = Field(default_factory=list)
    routes: list[NotifyRouteSettings] = Field(default_factory=list)
    timezone: str = "Asia/Shanghai"  # quiet hours and the times shown in messages
    template_dir: Path | None = None  # operator's templates, looked up before the built-in ones
    public_url: str = ""  # base URL of the API as the duty staff reach it (links in messages)
    case_url: str = ""  # link to a case, "{id}" replaced (default: public_url + /api/v1/cases/{id})
    link_secret: SecretStr = SecretStr("")  # signs the acknowledge links (>= 16 characters)
    link_ttl: Duration = Duration("24h")
    max_age: Duration = Duration("24h")  # a message not delivered by then is dead-lettered
    base_delay: float = Field(default=2.0, gt=0, le=600)
    max_delay: float = Field(default=300.0, gt=0, le=86400)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)

    @field_validator("link_ttl", "max_age")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        if v.ns <= 0:
            raise ValueError("must be a positive duration")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> NotifySettings:
        names = [c.name for c in self.channels]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"channels: duplicate name {sorted(dup)[0]!r}")
        for i, route in enumerate(self.routes):
            unknown = [c for c in route.channels if c not in names]
            if unknown:
                raise ValueError(f"routes[{i}]: unknown channel {unknown[0]!r}")
        secret = self.link_secret.get_secret_value()
        if secret and len(secret) < 16:
            raise ValueError("link_secret: at least 16 characters")
        if secret and not self.public_url.startswith(("http://", "https://")):
            raise ValueError("public_url: required (http:// or https://) with link_secret")
        if self.template_dir is not None and not self.template_dir.is_dir():
            raise ValueError(f"template_dir: {self.template_dir} is not a directory")
        return self
