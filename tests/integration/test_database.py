"""The migration runner against a real SQLite file and the real PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ingest.deadletter import DeadLetter, DeadLetterStore, Reason
from lifeline.db import DatabaseError, create_db_engine, migrate, open_database

pytestmark = pytest.mark.integration


def test_migrations_apply_once_and_keep_data(db_url: str) -> None:
    engine = open_database(db_url)
    store = DeadLetterStore(engine)
    store.add_many([DeadLetter("t", b"x", Reason.NOT_JSON, "d", 1)])
    calls: list[int] = []

    def add_column(conn: Connection) -> None:
        calls.append(2)
        conn.exec_driver_sql("CREATE TABLE probe (id INTEGER PRIMARY KEY)")

    noop = [(1, "probe v1", lambda conn: calls.append(1))]
    assert migrate(engine, {"probe": noop}) == {"probe": 1}
    assert migrate(engine, {"probe": [*noop, (2, "probe table", add_column)]}) == {"probe": 2}
    assert migrate(engine, {"probe": [*noop, (2, "probe table", add_column)]}) == {"probe": 2}
    assert calls == [1, 2]
    reopened = open_database(db_url)
    assert DeadLetterStore(reopened).count() == {"not_json": 1}
    engine.dispose()
    reopened.dispose()


def test_failed_migration_rolls_back_and_is_reported(db_url: str) -> None:
    engine = create_db_engine(db_url)

    def broken(conn: Connection) -> None:
        conn.exec_driver_sql("CREATE TABLE half (id INTEGER)")
        conn.exec_driver_sql("THIS IS NOT SQL")

    with pytest.raises(DatabaseError):
        migrate(engine, {"broken": [(1, "broken", broken)]})
    with engine.connect() as conn:
        version = conn.execute(sa.text(
            "SELECT version FROM schema_versions WHERE component = 'broken'")).scalar_one()
    assert version == 0
    if not db_url.startswith("sqlite"):  # SQLite DDL is not transactional under pysqlite
        assert "half" not in sa.inspect(engine).get_table_names()
    with pytest.raises(DatabaseError, match="increase"):
        migrate(engine, {"x": [(2, "b", lambda c: None), (1, "a", lambda c: None)]})
    engine.dispose()
