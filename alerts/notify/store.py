"""The ``notify_ack_links`` table: acknowledge links already used (single use)."""

from __future__ import annotations

import sqlalchemy as sa

from alerts.metadata import metadata

ack_links = sa.Table(
    "notify_ack_links", metadata,
    sa.Column("nonce", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),  # "alert" or "case"
    sa.Column("object_id", sa.Integer, nullable=False),
    sa.Column("used_ns", sa.BigInteger, nullable=False),
    sa.Column("outcome", sa.String(300), nullable=False, default=""),
)
