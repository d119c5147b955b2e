"""WeCom (企业微信) group robot: ``markdown`` messages to
``https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…``; answer ``{"errcode": 0}``."""

from __future__ import annotations

import httpx

from alerts.notify.channels.http import CodeRule, post_json
from alerts.notify.model import Message

MAX_BYTES = 4096  # markdown.content limit
CODES = {
    -1: CodeRule("system busy", retryable=True),
    45009: CodeRule("api freq out of limit", retryable=True, throttled_s=60.0),
    45033: CodeRule("too many concurrent calls", retryable=True, throttled_s=5.0),
    93000: CodeRule("invalid webhook url (key)", retryable=False),
    93004: CodeRule("robot disabled", retryable=False),
    40058: CodeRule("invalid content", retryable=False),
}


def clip(text: str, limit: int = MAX_BYTES) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes (on a character boundary)."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit - 3].decode(errors="ignore") + "…"


class WeComChannel:
    """Posts markdown to a WeCom group robot."""

    type = "wecom"

    def __init__(self, name: str, url: str, *, timeout: float = 10.0) -> None:
        self.name = name
        self._url = url
        self._client = httpx.Client(timeout=timeout)

    def payload(self, message: Message) -> dict[str, object]:
        """The request body."""
        return {"msgtype": "markdown", "markdown": {"content": clip(message.markdown)}}

    def send(self, message: Message) -> None:
        """POST the message; a non-zero ``errcode`` is a failure."""
        post_json(self._client, self.name, self._url, self.payload(message), ("errcode",), CODES)
