"""Notification channels beside the dispatch webhook (WeCom, DingTalk, Feishu robots,
e-mail, an SMS gateway): routing, messages, the channel worker and acknowledge links.

Channel rows live in the webhook outbox (``target`` = the channel's name); see
docs/notifications.md."""
