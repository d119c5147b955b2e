"""Feishu (飞书) custom robot: ``interactive`` cards; signed with ``timestamp`` (s) and
``sign`` = base64(HMAC-SHA256(key="{timestamp}\\n{secret}", msg=b"")) in the body. The
card's buttons open the acknowledge link and the case (a custom robot's card cannot call
back; the link is the callback)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from alerts.notify.channels.http import CodeRule, SignedRobot, post_json
from alerts.notify.model import Message

CODES = {
    9499: CodeRule("too many requests (100/min, 5/s)", retryable=True, throttled_s=10.0),
    11232: CodeRule("frequency limited", retryable=True, throttled_s=10.0),
    19021: CodeRule("sign match fail or timestamp not within one hour", retryable=False),
    19022: CodeRule("ip not allowed", retryable=False),
    19024: CodeRule("key words not found", retryable=False),
    19001: CodeRule("param invalid: incoming webhook access token invalid", retryable=False),
    19002: CodeRule("invalid params", retryable=False),
}
TEMPLATES = {"critical": "red", "major": "orange", "minor": "yellow", "warning": "yellow",
             "info": "blue", "resolved": "green"}


def sign(secret: str, timestamp: int) -> str:
    """The body's ``sign``."""
    mac = hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


class FeishuChannel(SignedRobot):
    """Posts interactive cards to a Feishu custom robot."""

    type = "feishu"

    def payload(self, message: Message) -> dict[str, Any]:
        """The request body: the card, and ``timestamp``/``sign`` when a secret is set."""
        text = self.with_keyword(message.markdown)
        actions: list[dict[str, Any]] = []
        if message.ack_url:
            actions.append({"tag": "button", "type": "primary", "url": message.ack_url,
                            "text": {"tag": "plain_text", "content": "确认接警"}})
        if message.case_url:
            actions.append({"tag": "button", "type": "default", "url": message.case_url,
                            "text": {"tag": "plain_text", "content": "查看案件"}})
        elements: list[dict[str, Any]] = [{"tag": "div",
                                           "text": {"tag": "lark_md", "content": text}}]
        if actions:
            elements.append({"tag": "action", "actions": actions})
        body: dict[str, Any] = {
            "msg_type": "interactive",
            "card": {"config": {"wide_screen_mode": True},
                     "header": {"title": {"tag": "plain_text", "content": message.title},
                                "template": TEMPLATES.get(message.severity, "blue")},
                     "elements": elements}}
        if self._secret:
            ts = int(self._clock())
            body = {"timestamp": str(ts), "sign": sign(self._secret, ts), **body}
        return body

    def send(self, message: Message) -> None:
        """POST the card; a non-zero ``code`` (or ``StatusCode``) is a failure."""
        post_json(self._client, self.name, self._url, self.payload(message),
                  ("code", "StatusCode"), CODES)
