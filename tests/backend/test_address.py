"""The address handed to launched workers (DORA_API_URL) is where the API really listens.

Found as a user: ``uvicorn backend.main:app --port P`` (P not 8000) launched a
worker told http://127.0.0.1:8000, because the URL came from DORA_API_HOST /
DORA_API_PORT, which only ``python -m backend`` binds. Now it comes from the
running server's socket (backend.address) unless DORA_API_URL is set.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.address import ServerAddress, listening_sockets, socket_url
from backend.launcher import LocalProcessLauncher
from backend.main import create_app
from backend.models import Run
from backend.settings import Settings, http_url
from tests.backend.conftest import env_of
from tests.backend.test_jobs import JOB, _launch
from tests.conftest import free_port, serve_in_thread, start_api, stop_server, wait_until
from tests.reliability.helpers import TINY_JOB


def _api_env(data: Path) -> dict[str, str]:
    """The API's environment with nothing that says where it listens."""
    env = {**os.environ, "DORA_DATA_DIR": str(data), "OMP_NUM_THREADS": "1"}
    for key in (
        "DORA_API_URL",
        "DORA_API_HOST",
        "DORA_API_PORT",
        "DORA_API_TOKEN",
        "DATABASE_URL",
        "DORA_RUN_ID",
        "DORA_INGEST_TOKEN",
    ):
        env.pop(key, None)
    return env


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _handle(db: Path, run_id: int) -> str | None:
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute("SELECT worker_handle FROM runs WHERE id = ?", (run_id,)).fetchone()
    return row[0] if row else None


def _worker_url(url: str, run_id: int) -> str:
    """DORA_API_URL in the environment the stand-in worker of ``run_id`` printed."""
    with httpx.Client(base_url=url) as client:
        return env_of(client, run_id)["DORA_API_URL"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/<pid>/environ")
def test_plain_uvicorn_on_another_port_tells_its_worker_that_port(tmp_path: Path) -> None:
    """`uvicorn backend.main:app --port P`, no DORA_API_URL / DORA_API_PORT: the real
    worker it launches is told http://127.0.0.1:P, and reports there."""
    port = free_port()
    while port == 8000:
        port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    api = f"http://127.0.0.1:{port}"
    proc = start_api(port, _api_env(data), tmp_path / "api.log", "--log-level", "warning")
    handle = None
    try:
        created = httpx.post(f"{api}/api/jobs", json={**TINY_JOB, "name": "where"}, timeout=30)
        assert created.status_code == 201, created.text
        run_id = created.json()["run_id"]
        handle = wait_until("the worker to start", lambda: _handle(data / "dora.db", run_id), 30)
        pid = int(handle.split(":")[1])
        # the handle is stored as soon as the child is forked: until it has exec'd the
        # worker, /proc shows the API's own environment
        wait_until("the worker to exec", lambda: b"dora_core" in _cmdline(pid), 30)
        env = _environ(pid)
        assert env["DORA_API_URL"] == api, env.get("DORA_API_URL")
        # and it is where the worker's telemetry arrives: it registers its modules there
        wait_until(
            "the worker to register with the API",
            lambda: httpx.get(f"{api}/api/runs/{run_id}/modules", timeout=10).json(),
            timeout=240,
            every=0.5,
        )
        assert httpx.delete(f"{api}/api/runs/{run_id}", timeout=30).status_code == 204
    finally:
        stop_server(proc)
        if handle is not None:  # a worker the delete did not reach
            LocalProcessLauncher().stop(handle, grace_s=0)


def test_a_queued_job_left_by_an_earlier_api_gets_the_new_servers_address(
    make_settings, stand_in: LocalProcessLauncher
) -> None:
    """uvicorn runs the app's start-up before it binds: a job left queued by an earlier API
    process starts once the socket exists (the watcher's next pass), told that socket."""
    settings = make_settings(max_jobs=1)  # DORA_API_PORT's default, 8000, is not where it runs
    with TestClient(create_app(settings, stand_in)) as first:
        holder = _launch(first, "sleep")
        queued = _launch(first, "ok")
        assert queued["queue_position"] == 1
        env_of(first, holder["id"])
        with first.app.state.db.reader() as session:
            handle = session.get(Run, holder["id"]).worker_handle
    # The first API is gone; its worker ends too, so the next API finds a free slot.
    stand_in.stop(handle, grace_s=0)
    assert stand_in.wait(handle, timeout_s=10) is not None
    with serve_in_thread(create_app(settings, stand_in)) as url:
        assert _worker_url(url, queued["id"]) == url


def test_a_launch_through_a_real_socket_gets_that_socket(make_settings, stand_in) -> None:
    settings = make_settings()
    assert settings.configured_url == "http://127.0.0.1:8000"
    with serve_in_thread(create_app(settings, stand_in)) as url:
        created = httpx.post(f"{url}/api/jobs", json={**JOB, "name": "ok"}, timeout=30)
        assert created.status_code == 201, created.text
        run_id = created.json()["run_id"]
        assert _worker_url(url, run_id) == url


def test_an_explicit_dora_api_url_wins(make_settings, stand_in) -> None:
    settings = make_settings(api_url="http://dora-api.internal:9999")
    with serve_in_thread(create_app(settings, stand_in)) as url:
        run_id = httpx.post(f"{url}/api/jobs", json={**JOB, "name": "ok"}, timeout=30).json()[
            "run_id"
        ]
        assert _worker_url(url, run_id) == "http://dora-api.internal:9999"


# --- the rules, without a server ------------------------------------------------------------


def test_listening_sockets_reads_this_processs_own() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        before = listening_sockets()
        assert ("127.0.0.1", sock.getsockname()[1]) not in before  # bound, not listening
        sock.listen()
        assert ("127.0.0.1", sock.getsockname()[1]) in listening_sockets()
        with socket.create_connection(sock.getsockname()) as conn:  # a connection is not
            assert ("127.0.0.1", conn.getsockname()[1]) not in listening_sockets()


@pytest.mark.parametrize(
    ("listening", "url"),
    [
        ({("0.0.0.0", 9001)}, "http://127.0.0.1:9001"),
        ({("::", 9001)}, "http://[::1]:9001"),
        ({("0.0.0.0", 9001), ("::", 9001)}, "http://127.0.0.1:9001"),
        ({("127.0.0.1", 9001)}, "http://127.0.0.1:9001"),
        ({("10.1.2.3", 9001)}, "http://10.1.2.3:9001"),
        ({("::1", 9001)}, "http://[::1]:9001"),
        (set(), None),
        ({("127.0.0.1", 9001), ("127.0.0.1", 9002)}, None),  # two servers: not this one's
    ],
)
def test_a_socket_gives_one_url(listening: set, url: str | None) -> None:
    assert socket_url(listening) == url


def test_the_order_of_the_sources(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, port=8000)
    two_servers = {("127.0.0.1", 9001), ("127.0.0.1", 9002)}

    explicit = ServerAddress(
        Settings(data_dir=tmp_path, api_url="http://x:1"), probe=lambda: {("0.0.0.0", 9001)}
    )
    assert (explicit.url(), explicit.source) == ("http://x:1", "DORA_API_URL")

    found = ServerAddress(settings, probe=lambda: {("0.0.0.0", 9001)})
    assert found.url() == "http://127.0.0.1:9001"  # the socket, before any request
    found.learn(("10.1.2.3", 9001))  # a request on the LAN address changes nothing
    assert (found.url(), found.source) == ("http://127.0.0.1:9001", "socket")

    pending = ServerAddress(settings, probe=set)
    pending.start()
    assert pending.url() is None  # before the bind: launches wait
    pending.learn(("127.0.0.1", 9002))
    assert (pending.url(), pending.source) == ("http://127.0.0.1:9002", "request")

    ambiguous = ServerAddress(settings, probe=lambda: two_servers)
    ambiguous.learn(["::1", 9002])
    assert ambiguous.url() == "http://[::1]:9002"

    in_process = ServerAddress(settings, probe=lambda: two_servers)
    in_process.learn(["testserver", 80])  # Starlette's TestClient: no socket at all
    assert (in_process.url(), in_process.source) == (settings.configured_url, "settings")
    unix = ServerAddress(settings, probe=set)
    unix.learn(None)  # uvicorn --uds
    assert unix.url() == "http://127.0.0.1:8000"

    late = ServerAddress(settings, grace_s=0.05, probe=set)
    assert late.url() is None
    late.start()
    time.sleep(0.1)
    assert (late.url(), late.source) == ("http://127.0.0.1:8000", "settings")


def test_configured_url_maps_a_wildcard_to_loopback(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path, host="0.0.0.0", port=9000).configured_url == (
        "http://127.0.0.1:9000"
    )
    assert Settings(data_dir=tmp_path, host="::", port=9000).configured_url == "http://[::1]:9000"
    assert http_url("::1", 1) == "http://[::1]:1" and http_url("10.0.0.2", 2) == "http://10.0.0.2:2"
