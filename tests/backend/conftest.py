"""Fixtures for the API's tests: a real database per test, the app under TestClient.

The database is a SQLite file in the test's temp dir. Tests marked
``both_databases`` run a second time against PostgreSQL: a real server that
the test session starts once (``tests/pgserver.py``), with an empty database
of its own for each test. Without the server binaries those runs skip with
the reason, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text

from backend.launcher import LocalProcessLauncher
from backend.main import create_app
from backend.settings import Settings
from tests.conftest import RunTokens, wait_until
from tests.pgserver import PostgresMissing, PostgresServer

TABLES = ("runs", "modules", "score_steps", "budget", "scalars", "events", "ingest_batches")
DATABASES = ("sqlite", pytest.param("postgresql", marks=pytest.mark.postgres))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_databases`` that use a database run on SQLite and PostgreSQL."""
    if "database_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_databases"
    ):
        metafunc.parametrize("db_kind", DATABASES, indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, stopped (and its files removed) at its end."""
    try:
        server = PostgresServer.start()
    except PostgresMissing as exc:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI=true and no PostgreSQL server to test against: {exc}")
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def db_kind(request: pytest.FixtureRequest) -> str:
    """``sqlite`` unless the test is parametrized over both databases."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path, db_kind: str) -> str:
    if db_kind == "postgresql":
        return request.getfixturevalue("postgres_server").new_database()
    return f"sqlite:///{tmp_path / 'data' / 'dora.db'}"


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "watch_interval_s": 0.1,
            "stream_interval_s": 0.05,
            "cancel_grace_s": 5.0,
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


# A stand-in for `dora_core.worker.cli` that the launcher starts instead of a real
# training run, so process handling (env, log, exit codes, signals) is tested
# in a fraction of a second. Its behaviour is chosen by the job's name.
STAND_IN = textwrap.dedent(
    """
    import json, os, signal, sys, time
    command, job_file = sys.argv[1], sys.argv[2]
    job = json.load(open(job_file))
    keys = ("DORA_API_URL", "DORA_RUN_ID", "DORA_INGEST_TOKEN", "DORA_API_TOKEN",
            "DATABASE_URL", "DORA_DATA_DIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
            "DORA_API_INSTANCE", "CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "RANK")
    # One write per line: torchrun's ranks share this log, and two print() calls of
    # different ranks could interleave within a line.
    def say(line):
        os.write(1, (line + "\\n").encode())
    say(" ".join(["stand-in", command, job_file, "cwd=" + os.getcwd()]))
    env = {k: os.environ.get(k) for k in keys}
    say("env " + json.dumps({**env, "pid": os.getpid()}))
    mode = job["name"]
    if mode == "exit-3":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("RuntimeError: boom at step 7", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "ok":
        sys.exit(0)
    if mode == "interrupted":  # the worker stopped by a signal after its checkpoint
        print("cancelled by SIGTERM at step 3", flush=True)
        sys.exit(143)
    if mode == "sleep":
        def on_term(signum, frame):
            print("got SIGTERM, checkpointing", flush=True)
            sys.exit(143)
        signal.signal(signal.SIGTERM, on_term)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
    for _ in range(600):
        time.sleep(0.1)
    sys.exit(9)
    """
)


@pytest.fixture
def stand_in(tmp_path: Path) -> LocalProcessLauncher:
    script = tmp_path / "stand_in_worker.py"
    script.write_text(STAND_IN)
    return LocalProcessLauncher(argv_prefix=(sys.executable, str(script)))


@pytest.fixture
def client(settings: Settings, stand_in: LocalProcessLauncher) -> Iterator[TestClient]:
    """The app under TestClient; it sends each run's writer token with that run's calls
    (``RunTokens``), as the run's worker would."""
    with TestClient(create_app(settings, stand_in)) as test_client:
        yield RunTokens().install(test_client)


def row_counts(url: str) -> dict[str, int]:
    """Rows per table, read with a fresh engine (independent of the app's sessions)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            return {
                t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in TABLES
                if t in present
            }
    finally:
        engine.dispose()


def env_of(client: TestClient, run_id: int) -> dict:
    """The environment the stand-in worker of ``run_id`` printed as its ``env`` log line."""
    line = wait_until(
        "the stand-in's env line",
        lambda: next(
            (
                line
                for line in client.get(f"/api/jobs/{run_id}/log").json()["lines"]
                if line.startswith("env ")
            ),
            None,
        ),
        timeout=15,
    )
    return json.loads(line[4:])


# --- telemetry helpers ---------------------------------------------------------

# Two blocks of three module types plus a head outside the blocks; ranks differ.
MODULES = [
    {"name": f"enc.{layer}.{kind}", "layer": layer, "type": kind, "shape": [8, 8], "rank": rank}
    for layer in range(2)
    for kind, rank in (("q", 3), ("v", 3), ("ffn", 5))
] + [{"name": "pooler.dense", "layer": None, "type": "pooler.dense", "shape": [8, 8], "rank": 2}]


def new_run(client: TestClient, register: bool = True, modules: list | None = None) -> int:
    """A run created as a worker started by hand creates it; the client keeps its writer
    token and sends it with the run's calls from here on (``RunTokens``)."""
    RunTokens.of(client)
    config = {"model": "minilm", "dataset": "rt-snippets", "max_steps": 100}
    resp = client.post("/api/runs", json={"name": "t", "config": config})
    assert resp.status_code == 201, resp.text
    run_id = resp.json()["id"]
    if register:
        body = {"modules": modules or MODULES, "total_steps": 100, "init_rank": 3, "target_rank": 2}
        reg = client.post(f"/api/runs/{run_id}/register", json=body)
        assert reg.status_code == 200, reg.text
    return run_id


def scores_record(step: int, modules: list | None = None) -> dict:
    """Scores that encode (step, module, component) so any mix-up shows; every 3rd bit off."""
    modules = modules or MODULES
    values, masks = {}, {}
    for m_i, m in enumerate(modules):
        values[m["name"]] = [step + m_i / 100 + c / 10_000 for c in range(m["rank"])]
        masks[m["name"]] = [0 if (step + m_i + c) % 3 == 0 else 1 for c in range(m["rank"])]
    return {"step": step, "values": values, "masks": masks}
