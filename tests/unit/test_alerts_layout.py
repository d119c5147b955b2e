"""The alerts package by concept: every table a concept's store declares (on the one
``alerts.metadata``) is created by the one migration history, as declared."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import sqlalchemy as sa

import alerts
from alerts.metadata import metadata
from alerts.migrations import MIGRATIONS
from lifeline.db import open_database


def _import_all() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(alerts.__path__, "alerts.")]
    for name in names:
        importlib.import_module(name)
    return names


def test_concepts_are_subpackages() -> None:
    names = _import_all()
    for concept in ("lifecycle", "cases", "delivery", "silences"):
        assert f"alerts.{concept}.store" in names
        assert f"alerts.{concept}.model" in names
        assert f"alerts.{concept}.ops" in names


def test_migrations_create_every_declared_table(tmp_path: Path) -> None:
    _import_all()
    engine = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    inspector = sa.inspect(engine)
    declared = set(metadata.tables)
    assert declared == {"alerts", "cases", "case_history", "silences", "webhook_outbox",
                        "case_callback_keys", "case_callback_nonces", "notify_ack_links"}
    assert declared <= set(inspector.get_table_names())
    for name, table in metadata.tables.items():
        assert {c["name"] for c in inspector.get_columns(name)} == set(table.columns.keys())
    with engine.connect() as conn:
        version = conn.execute(sa.text(
            "SELECT version FROM schema_versions WHERE component = 'alerts'")).scalar_one()
    assert version == MIGRATIONS[-1][0] == 5
