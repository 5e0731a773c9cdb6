"""Shared fixtures: free loopback ports, the repo root, offline hub settings, real servers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent

# The module types of a BERT block in order, as the tests expect them (written out here,
# independently of dora_core.targets, so a change there shows up as a failure).
BERT_TYPES = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]
LLAMA_TYPES = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


def wait_until(
    what: str, check: Callable[[], Any], timeout: float = 120.0, every: float = 0.1
) -> Any:
    """Poll ``check`` until it returns something truthy, and return that; fail naming ``what``.

    Generous by default: the timeout only matters when a test is failing,
    and the suite shares two cores with training workers.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


class RunTokens:
    """Makes a test client act as each run's worker: every run has a writer token
    (docs/protocol.md), so the client keeps the token ``POST /api/runs`` returned and sends
    it with that run's own calls (``/api/runs/<id>/...``) unless the request carries an
    ``Authorization`` header of its own. ``tokens[run_id] = ...`` adds one from elsewhere
    (a launched worker's environment). Event hooks, so that it works on httpx clients and
    on Starlette's TestClient alike: ``RunTokens().install(client)``."""

    _RUN_PATH = re.compile(r"^/api/runs/(\d+)/")

    def __init__(self) -> None:
        self.tokens: dict[int, str] = {}

    @classmethod
    def of(cls, client: Any) -> RunTokens:
        """The tokens ``client`` keeps, installing them first if it has none."""
        if not isinstance(getattr(client, "run_tokens", None), cls):
            cls().install(client)
        return client.run_tokens

    def install(self, client: Any) -> Any:
        client.run_tokens = self
        hooks = client.event_hooks
        client.event_hooks = {
            "request": [*hooks.get("request", []), self._send_token],
            "response": [*hooks.get("response", []), self._keep_token],
        }
        return client

    def _send_token(self, request: Any) -> None:
        match = self._RUN_PATH.match(request.url.path)
        if match and "authorization" not in request.headers:
            token = self.tokens.get(int(match.group(1)))
            if token is not None:
                request.headers["Authorization"] = f"Bearer {token}"

    def _keep_token(self, response: Any) -> None:
        request = response.request
        if request.method == "POST" and request.url.path == "/api/runs":
            response.read()
            if response.status_code == 201:
                created = response.json()
                self.tokens[created["id"]] = created["token"]


# --- real servers (uvicorn, the dashboard) as child processes ----------------------------
# Every test that needs a real server starts it here: start_server (any `python -m ...`,
# up once its health URL answers), start_api (the API as `make run` starts it),
# stop_server (Ctrl-C, then SIGKILL), serve_in_thread (an app built in the test).


def run_module(
    module: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess:
    """``python -m module`` from the repo root with exactly ``env``; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_refusal(out: subprocess.CompletedProcess, variable: str, value: str) -> None:
    """A process stopped by a bad setting: exit 2, no traceback, one stderr line naming it."""
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert variable in lines[0] and value in lines[0]


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


def start_server(
    args: list[str], env: dict[str, str], health: str, log: Path, **popen: Any
) -> subprocess.Popen:
    """Start ``python <args>`` in the repo root, logging to ``log``, and wait for ``health``.

    ``popen`` goes to ``subprocess.Popen`` as it is (e.g. ``preexec_fn``).
    """
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            **popen,
        )
    try:
        _wait_http(health, proc, log)
    except Exception:
        stop_server(proc)
        raise
    return proc


def start_api(port: int, env: dict[str, str], log: Path, *options: str) -> subprocess.Popen:
    """``uvicorn backend.main:app`` on 127.0.0.1:``port``, the way `make run` starts the API.

    Its settings come from ``env`` (DORA_DATA_DIR, ...); ``options`` are more
    uvicorn options (``--log-level warning``). Up when this returns.
    """
    args = ["-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(port)]
    return start_server([*args, *options], env, f"http://127.0.0.1:{port}/api/health", log)


@contextlib.contextmanager
def serve_in_thread(app: Any, timeout: float = 30.0) -> Iterator[str]:
    """``app`` (built in the test: a stand-in launcher, chosen settings) behind a real
    uvicorn on a free loopback port, in a thread of this process; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
