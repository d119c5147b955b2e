"""A generic SMS gateway: one HTTP request per message, rendered from the channel's
templates (Jinja2: ``url`` used as is, ``headers`` values and ``body`` templated with
``text``, ``title``, ``phones``, ``secret``); any 2xx is success, 408/429/5xx retried."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import jinja2
import orjson
from jinja2.sandbox import SandboxedEnvironment

from alerts.delivery.webhook import is_retryable_status
from alerts.notify.model import ChannelError, Message

_ENV = SandboxedEnvironment(autoescape=False, undefined=jinja2.StrictUndefined)
_ENV.filters["tojson"] = lambda v: orjson.dumps(v).decode()


class SmsChannel:
    """Sends the message's SMS text through an HTTP gateway."""

    type = "sms"

    def __init__(self, name: str, url: str, *, method: str = "POST",
                 headers: Mapping[str, str] | None = None, body: str = "",
                 phones: list[str] | None = None, secret: str = "",
                 timeout: float = 10.0) -> None:
        self.name = name
        self._url = url
        self.method = method
        self._headers = {k: _ENV.from_string(v) for k, v in (headers or {}).items()}
        self._body = _ENV.from_string(body) if body else None
        self.phones = list(phones or [])
        self._secret = secret
        self._client = httpx.Client(timeout=timeout)

    def request(self, message: Message) -> tuple[dict[str, str], bytes]:
        """The headers and body of the gateway request."""
        ctx = {"text": message.sms, "title": message.title, "phones": self.phones,
               "secret": self._secret}
        try:
            headers = {k: t.render(ctx) for k, t in self._headers.items()}
            body = self._body.render(ctx).encode() if self._body else b""
        except jinja2.TemplateError as exc:
            raise ChannelError(f"{self.name}: template: {exc}", retryable=False) from exc
        return headers, body

    def send(self, message: Message) -> None:
        """Send the request; non-2xx is a failure."""
        headers, body = self.request(message)
        try:
            resp = self._client.request(self.method, self._url, content=body or None,
                                        headers=headers)
        except httpx.TimeoutException as exc:
            raise ChannelError(f"{self.name}: timeout", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise ChannelError(f"{self.name}: cannot connect ({type(exc).__name__})",
                               retryable=True) from exc
        if resp.status_code >= 300:
            raise ChannelError(f"{self.name}: HTTP {resp.status_code}",
                               retryable=is_retryable_status(resp.status_code),
                               status=resp.status_code)
