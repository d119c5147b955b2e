"""The service database: engine set-up and versioned schema migrations.

Each package that keeps tables exposes ``MIGRATIONS``: an ordered list of
``(version, description, upgrade)`` where ``upgrade(conn)`` runs inside one
transaction. Applied versions are recorded per component in
``schema_versions``, so an upgrade only ever adds and never loses data.
SQLite (default) and PostgreSQL are both supported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from lifeline.errors import LifelineError

log = logging.getLogger(__name__)

Migration = tuple[int, str, Callable[[Connection], None]]

_versions_meta = sa.MetaData()
schema_versions = sa.Table(
    "schema_versions",
    _versions_meta,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)


class DatabaseError(LifelineError):
    """The database cannot be reached or migrated."""


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys."""
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    engine = sa.create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def migrate(engine: Engine, components: Mapping[str, Sequence[Migration]]) -> dict[str, int]:
    """Apply pending migrations of every component; returns the resulting versions."""
    try:
        _versions_meta.create_all(engine)
        result: dict[str, int] = {}
        for component, migrations in components.items():
            versions = [v for v, _, _ in migrations]
            if versions != sorted(set(versions)):
                raise DatabaseError(f"{component}: migration versions must increase")
            with engine.begin() as conn:
                current = conn.execute(
                    sa.select(schema_versions.c.version).where(
                        schema_versions.c.component == component)
                ).scalar_one_or_none()
                if current is None:
                    conn.execute(schema_versions.insert().values(component=component, version=0))
                    current = 0
            for version, description, upgrade in migrations:
                if version <= current:
                    continue
                with engine.begin() as conn:
                    log.info("migrating %s to version %d: %s", component, version, description)
                    upgrade(conn)
                    conn.execute(schema_versions.update()
                                 .where(schema_versions.c.component == component)
                                 .values(version=version))
                current = version
            result[component] = current
        return result
    except sa.exc.SQLAlchemyError as exc:
        raise DatabaseError(f"database {engine.url.render_as_string()}: {exc}") from exc


def schema_components() -> dict[str, Sequence[Migration]]:
    """Every package's migrations, in dependency order."""
    from alerts.migrations import MIGRATIONS as ALERTS  # noqa: PLC0415 - avoid import cycles
    from devices.store import MIGRATIONS as DEVICES  # noqa: PLC0415 - avoid import cycles
    from ingest.deadletter import MIGRATIONS as INGEST  # noqa: PLC0415 - avoid import cycles
    from lifeline.leadership import MIGRATIONS as LEADERSHIP  # noqa: PLC0415 - import cycles
    from lifeline.shared_state import MIGRATIONS as STATE  # noqa: PLC0415 - import cycles

    return {"devices": DEVICES, "ingest": INGEST, "alerts": ALERTS, "leadership": LEADERSHIP,
            "state": STATE}


def open_database(url: str) -> Engine:
    """Engine for ``url`` with every component's schema migrated to the latest version."""
    engine = create_db_engine(url)
    migrate(engine, schema_components())
    return engine
