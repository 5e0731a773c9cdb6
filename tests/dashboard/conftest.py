"""Real servers for the dashboard's integration and browser tests.

The API is the real one (uvicorn + SQLite in a temp data dir); the dashboard
is started the way `make run` starts it. Both bind 127.0.0.1 on free ports
and are stopped by the fixture.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dashboard.api import ApiClient
from tests.conftest import free_port, start_api, stop_server
from tests.conftest import start_server as start_server  # the browser tests start the dashboard


@pytest.fixture(scope="session")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real API with an empty temp data dir, shared by this package's tests."""
    data = tmp_path_factory.mktemp("dora-data")
    port = free_port()
    env = {
        **os.environ,
        "DORA_DATA_DIR": str(data),
        "DORA_API_HOST": "127.0.0.1",
        "DORA_API_PORT": str(port),  # the launcher tells workers where to report
        # workers inherit this: two jobs on two cores, one thread each, no oversubscription
        "OMP_NUM_THREADS": "1",
    }
    env.pop("DORA_API_TOKEN", None)
    env.pop("DATABASE_URL", None)
    proc = start_api(port, env, data / "api.log", "--log-level", "warning")
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture
def client(api_url: str) -> Iterator[ApiClient]:
    api = ApiClient(api_url, token="")
    yield api
    api.close()
