"""The HTTP part shared by the robot channels: POST JSON, then read the platform's code
(HTTP 200 with a non-zero code is a failure). Error texts name the channel, never the
URL (it holds the robot's key)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from alerts.delivery.webhook import is_retryable_status
from alerts.notify.model import ChannelError


class SignedRobot:
    """What the signed group robots (DingTalk, Feishu) share: the channel name, the robot
    URL, an optional signing secret and keyword, the clock the signature is stamped with
    and one HTTP client."""

    def __init__(self, name: str, url: str, secret: str = "", keyword: str = "", *,
                 timeout: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self._url = url
        self._secret = secret
        self.keyword = keyword
        self._clock = clock
        self._client = httpx.Client(timeout=timeout)

    def with_keyword(self, text: str) -> str:
        """``text``, with the keyword the robot requires appended when it is missing."""
        if self.keyword and self.keyword not in text:
            return f"{text}\n\n{self.keyword}"
        return text


@dataclass(frozen=True, slots=True)
class CodeRule:
    """What a platform error code means: retry or not, and how long the robot is blocked."""

    meaning: str
    retryable: bool
    throttled_s: float = 0.0


def post_json(client: httpx.Client, name: str, url: str, body: Mapping[str, Any],
              code_keys: tuple[str, ...], codes: Mapping[int, CodeRule],
              headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """POST ``body``; raise :class:`ChannelError` on a transport error, a non-2xx answer
    or a non-zero platform code (the first of ``code_keys`` in the answer). Unknown
    non-zero codes are permanent (dead-lettered, visible, resendable)."""
    try:
        resp = client.post(url, content=orjson.dumps(dict(body)),
                           headers={"Content-Type": "application/json; charset=utf-8",
                                    **(headers or {})})
    except httpx.TimeoutException as exc:
        raise ChannelError(f"{name}: timeout", retryable=True) from exc
    except httpx.HTTPError as exc:
        raise ChannelError(f"{name}: cannot connect ({type(exc).__name__})",
                           retryable=True) from exc
    if resp.status_code >= 300:
        raise ChannelError(f"{name}: HTTP {resp.status_code}",
                           retryable=is_retryable_status(resp.status_code),
                           status=resp.status_code)
    try:
        answer = orjson.loads(resp.content) if resp.content else {}
    except orjson.JSONDecodeError as exc:
        raise ChannelError(f"{name}: answer is not JSON", retryable=True,
                           status=resp.status_code) from exc
    if not isinstance(answer, dict):
        raise ChannelError(f"{name}: unexpected answer", retryable=True, status=resp.status_code)
    code: Any = 0
    for key in code_keys:
        if key in answer:
            code = answer[key]
            break
    if code in (0, None):
        return answer
    msg = str(answer.get("errmsg") or answer.get("msg") or answer.get("StatusMessage") or "")
    rule = codes.get(int(code)) if isinstance(code, int) else None
    if rule is None:
        raise ChannelError(f"{name}: error {code} {msg[:200]}", retryable=False,
                           status=resp.status_code)
    raise ChannelError(f"{name}: error {code} ({rule.meaning}) {msg[:200]}",
                       retryable=rule.retryable, status=resp.status_code,
                       throttled_s=rule.throttled_s)
