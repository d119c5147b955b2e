"""The one SQLAlchemy ``MetaData`` every alerts table belongs to (tables are declared in
each concept's ``store`` module; :mod:`alerts.migrations` keeps their history)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
