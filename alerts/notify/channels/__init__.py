"""One module per channel type; :func:`build_channel` makes a channel from its settings."""

from __future__ import annotations

from alerts.notify.channels.dingtalk import DingTalkChannel
from alerts.notify.channels.email import EmailChannel
from alerts.notify.channels.feishu import FeishuChannel
from alerts.notify.channels.sms import SmsChannel
from alerts.notify.channels.wecom import WeComChannel
from alerts.notify.model import Channel

__all__ = [
           "Channel",
           "DingTalkChannel",
           "EmailChannel",
           "FeishuChannel",
           "SmsChannel",
           "WeComChannel",
]
