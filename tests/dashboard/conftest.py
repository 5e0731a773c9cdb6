"""Real servers for the dashboard's integration and browser tests.

The API is the real one (uvicorn + SQLite in a temp data dir); the dashboard
is started the way `make run` starts it. Both bind 127.0.0.1 on free ports
and are stopped by the fixture.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dashboard.api import ApiClient
from tests.conftest import REPO_ROOT, free_port


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def start_server(args: list[str], env: dict[str, str], health: str, log: Path) -> subprocess.Popen:
    """Start ``python <args>`` in the repo root, logging to ``log``, and wait for ``health``."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_http(health, proc, log)
    except Exception:
        stop_server(proc)
        raise
    return proc


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
    url = f"http://127.0.0.1:{port}"
    proc = start_server(
        [
            "-m",
            "uvicorn",
            "backend.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env,
        f"{url}/api/health",
        data / "api.log",
    )
    yield url
    stop_server(proc)


@pytest.fixture
def client(api_url: str) -> Iterator[ApiClient]:
    api = ApiClient(api_url, token="")
    yield api
    api.close()
