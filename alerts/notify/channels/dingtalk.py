"""DingTalk (钉钉) custom robot: ``markdown`` messages; signed with ``timestamp`` (ms) and
``sign`` = URL-encoded base64(HMAC-SHA256(secret, "{timestamp}\\n{secret}")) in the query;
a keyword rule needs the keyword in every message."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote_plus

from alerts.notify.channels.http import CodeRule, SignedRobot, post_json
from alerts.notify.model import Message

CODES = {
    -1: CodeRule("system busy", retryable=True),
    130101: CodeRule("send too fast (20/min): throttled", retryable=True, throttled_s=60.0),
    90030: CodeRule("webhook over limit", retryable=True, throttled_s=600.0),
    310000: CodeRule("keywords / sign / ip rule not met", retryable=False),
    300001: CodeRule("invalid token", retryable=False),
    400013: CodeRule("robot not in the group", retryable=False),
    410100: CodeRule("robot disabled", retryable=False),
}


def sign(secret: str, timestamp_ms: int) -> str:
    """The ``sign`` query value (already URL-encoded)."""
    mac = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256)
    return quote_plus(base64.b64encode(mac.digest()).decode())


class DingTalkChannel(SignedRobot):
    """Posts markdown to a DingTalk custom robot."""

    type = "dingtalk"

    def url(self) -> str:
        """The robot URL with ``timestamp`` and ``sign`` when a secret is set."""
        if not self._secret:
            return self._url
        ts = int(self._clock() * 1000)
        sep = "&" if "?" in self._url else "?"
        return f"{self._url}{sep}timestamp={ts}&sign={sign(self._secret, ts)}"

    def payload(self, message: Message) -> dict[str, object]:
        """The request body (the keyword added when the text lacks it)."""
        return {"msgtype": "markdown", "markdown": {"title": message.title[:64],
                                                    "text": self.with_keyword(message.markdown)}}

    def send(self, message: Message) -> None:
        """POST the message; a non-zero ``errcode`` is a failure."""
        post_json(self._client, self.name, self.url(), self.payload(message), ("errcode",),
                  CODES)
