"""Alembic environment: runs on the connection the API hands over (backend.db.Database.migrate).

From the command line (to write a new revision) it connects to DATABASE_URL:

    DATABASE_URL=sqlite:///data/dora.db alembic -c backend/migrations/alembic.ini \
        revision --autogenerate -m "what changed"
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from backend.models import Base

config = context.config


def _run(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set DATABASE_URL to the database to migrate")
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
