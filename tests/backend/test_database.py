"""Schema migrations, SQLite settings, waiting for a locked database, packaging."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from backend.db import Database
from backend.models import Base
from tests.backend.conftest import TABLES, new_run, scores_record
from tests.conftest import REPO_ROOT


@pytest.mark.both_databases
def test_migrations_build_exactly_the_models_schema_and_rerun_cleanly(database_url) -> None:
    db = Database(database_url)
    try:
        db.migrate()
        db.migrate()  # already at head: a no-op
        with db.engine.connect() as conn:
            assert set(TABLES) <= set(inspect(conn).get_table_names())
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        db.dispose()


def test_sqlite_runs_in_wal_with_foreign_keys_and_a_busy_timeout(database_url) -> None:
    db = Database(database_url, busy_timeout_s=12.5)
    try:
        with db.engine.connect() as conn:
            pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == 12500
    finally:
        db.dispose()


def test_ingest_waits_for_a_lock_held_by_another_process_then_succeeds(
    client, database_url
) -> None:
    run_id = new_run(client)
    path = database_url.removeprefix("sqlite:///")
    hold = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
        "time.sleep(1.5); c.execute('COMMIT')\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, path], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    resp = client.post(
        f"/api/runs/{run_id}/telemetry", json={"seq": 0, "scores": [scores_record(1)]}
    )
    waited = time.monotonic() - started
    assert holder.wait(timeout=10) == 0
    assert resp.status_code == 200
    assert waited >= 1.0  # it really waited instead of failing
    assert client.get(f"/api/runs/{run_id}/steps").json()["steps"] == [1]


@pytest.mark.both_databases
def test_each_database_run_really_runs_on_that_database(database_url, db_kind) -> None:
    """The PostgreSQL runs really reach a PostgreSQL server (not SQLite under another name)."""
    db = Database(database_url)
    try:
        assert db.engine.dialect.name == db_kind
        with db.engine.connect() as conn:
            version = conn.exec_driver_sql(
                "SELECT version()" if db_kind == "postgresql" else "SELECT sqlite_version()"
            ).scalar()
        assert version.startswith("PostgreSQL ") if db_kind == "postgresql" else version[0] == "3"
    finally:
        db.dispose()


@pytest.mark.slow
def test_wheel_ships_the_migrations(tmp_path) -> None:
    """A non-editable install must still find its Alembic scripts."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO_ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    [wheel] = tmp_path.glob("dora_toolkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "backend/migrations/env.py",
        "backend/migrations/script.py.mako",
        "backend/migrations/versions/0001_initial.py",
    ):
        assert needed in names, needed


@pytest.mark.both_databases
def test_api_processes_starting_together_migrate_one_empty_database_once(database_url) -> None:
    """Several API processes started at once (a scaled deployment) all migrate at start-up:
    one builds the schema, the others wait for it and find it at head."""
    start_up = (
        "import sys, time\n"
        "from backend.db import Database\n"
        "db = Database(sys.argv[1])\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"  # all at one moment
        "db.migrate(); print(db.instance_id())\n"
    )
    at = str(time.time() + 5)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", start_up, database_url, at],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1  # one instance id for all
    db = Database(database_url)
    try:
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            assert conn.exec_driver_sql("SELECT count(*) FROM instance").scalar() == 1
    finally:
        db.dispose()
