"""Fixtures for the reliability tests: real APIs and workers, always cleaned up.

Every process a test starts is gone when it ends: API servers are stopped
(or were killed by the test), workers the API launched are killed through
their stored handles (pid and start time, so a reused pid is never hit),
and workers started by hand are killed as a process group.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The API's own fixtures (a real SQLite file per test, the stand-in worker script, TestClient).
from tests.backend.conftest import (  # noqa: F401
    client,
    database_url,
    db_kind,
    make_settings,
    settings,
    stand_in,
)
from tests.conftest import free_port
from tests.reliability.helpers import ApiServer, kill_group


@pytest.fixture
def api_factory(tmp_path: Path) -> Iterator[Callable[..., ApiServer]]:
    """``make(token=None)`` -> a started ``python -m backend`` over a fresh data dir."""
    servers: list[ApiServer] = []

    def make(token: str | None = None) -> ApiServer:
        server = ApiServer(tmp_path / f"data-{len(servers)}", free_port(), token)
        server.data_dir.mkdir(parents=True)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
        for server in servers:
            server.kill_workers()


@pytest.fixture
def hand_workers() -> Iterator[list[subprocess.Popen]]:
    """Append workers started by hand here; they are killed (as groups) if still running."""
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for proc in procs:
            kill_group(proc)
