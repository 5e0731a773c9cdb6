"""`make run`'s entry point brings up API + dashboard and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import REPO_ROOT, free_port


def _wait(url: str, timeout: float = 90.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=2.0)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_serve_starts_both_and_stops_on_sigint(tmp_path) -> None:
    api_port, dash_port = free_port(), free_port()
    env = {**os.environ, "DORA_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backend.serve",
            "--api-port",
            str(api_port),
            "--dash-port",
            str(dash_port),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        health = _wait(f"http://127.0.0.1:{api_port}/api/health")
        assert health.json()["status"] == "ok"
        page = _wait(f"http://127.0.0.1:{dash_port}/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{dash_port}" in out
    # both children are gone: the ports are free again
    for port in (api_port, dash_port):
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
        except httpx.HTTPError:
            continue
        raise AssertionError(f"port {port} still answers after Ctrl-C")
