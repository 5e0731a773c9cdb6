"""Engines, sessions and migrations.

SQLite gets WAL (readers never block the writer), a busy timeout (a writer
waits for the lock instead of failing), foreign keys (cascading deletes) and
``synchronous=NORMAL`` (safe in WAL: a crash of the API loses nothing that
was committed; only a power cut can drop the last transactions).

Write transactions on SQLite start with ``BEGIN IMMEDIATE``: they take the
write lock up front and wait for it under the busy timeout. A deferred
transaction that reads first and writes later can instead fail at once with
SQLITE_BUSY_SNAPSHOT when another writer committed in between, which no
timeout fixes. Read sessions use a plain deferred BEGIN.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from backend.models import Instance, utcnow

# PostgreSQL advisory lock key held while migrating (any constant unique to this app).
MIGRATION_LOCK = 0x646F7261  # 'dora'


def _sqlite_engine(url: str, busy_timeout_s: float, begin: str) -> Engine:
    engine = create_engine(
        url,
        connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event (below) emit BEGIN, not the driver.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Database:
    """A read engine and a write engine over one URL (the same engine off SQLite)."""

    def __init__(self, url: str, busy_timeout_s: float = 30.0):
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(url, busy_timeout_s, "BEGIN")
            self.write_engine = _sqlite_engine(url, busy_timeout_s, "BEGIN IMMEDIATE")
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
            self.write_engine = self.engine
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)

    @contextmanager
    def reader(self) -> Iterator[Session]:
        with self._read() as session:
            yield session

    @contextmanager
    def writer(self) -> Iterator[Session]:
        """A session whose transaction holds the write lock (SQLite) from its first statement."""
        with self._write() as session:
            yield session

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (run once by the API at start-up).

        API processes started together on one database take turns: the lock
        is taken before Alembic looks at the schema and held until every
        revision is in, in one transaction (on PostgreSQL a transaction-level
        advisory lock, as two concurrent ``CREATE TABLE`` would fail the second;
        on SQLite the write lock of ``BEGIN IMMEDIATE``; Alembic would otherwise
        commit after each revision there, and another process could start on
        the next one too). The later ones find the schema at head.
        """
        with self.write_engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            else:
                conn.execute(text("SELECT 1"))  # begins the transaction (SQLite: the lock)
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()

    def instance_id(self) -> str:
        """This database's API instance id (made by migration 0005; made here if its row
        was removed). Two API processes on one database are one instance."""
        with self.writer() as session:
            row = session.scalars(select(Instance).order_by(Instance.created_at).limit(1)).first()
            if row is None:
                row = Instance(id=uuid.uuid4().hex, created_at=utcnow())
                session.add(row)
                session.commit()
            return row.id

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        self.write_engine.dispose()


def alembic_config() -> Config:
    """Alembic config pointing at the migrations shipped inside this package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(files("backend") / "migrations"))
    return cfg
