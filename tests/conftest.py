"""Shared test set-up: the real-service harness fixtures and the service databases."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

pytest_plugins = ["tests.harness_fixtures"]

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_available() -> str | None:
    """None when PostgreSQL answers at 127.0.0.1:5432, else the reason."""
    try:
        engine = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:
        return f"no PostgreSQL at 127.0.0.1:5432 ({type(exc).__name__})"
    return None


_PG_UNAVAILABLE = _postgres_available()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo `setup_logging` of in-process CLI runs.

    It replaces the root handlers with one bound to the test's captured stderr, which
    pytest closes after the test; later log calls would print "Logging error".
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty service database: a SQLite file, and a PostgreSQL database.

    The PostgreSQL variant creates a database of its own on the server at
    127.0.0.1:5432 and drops it afterwards; it is skipped, with the reason,
    only when no PostgreSQL answers there.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lifeline.db'}"
        return
    if _PG_UNAVAILABLE:
        pytest.skip(_PG_UNAVAILABLE)
    name = f"lifeline_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        admin.dispose()
