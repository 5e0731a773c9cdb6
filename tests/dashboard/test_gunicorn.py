"""The dashboard under gunicorn, the way the Docker image serves it (docker-compose.yml).

Real gunicorn processes from this environment on a free loopback port: a page
is served by gunicorn's workers (not Flask's development server), and a bad
setting stops gunicorn with one line, exit 2, before any worker forks.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import (
    REPO_ROOT,
    assert_one_line_refusal,
    free_port,
    start_server,
    stop_server,
)

APP = "dashboard.wsgi:create_server()"


@functools.cache
def _quiet_options() -> tuple[str, ...]:
    """gunicorn >= 25 opens a control socket in ~/.gunicorn: not for a test's server."""
    out = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"gunicorn is not installed here: {out.stderr}"
    return ("--no-control-socket",) if "--no-control-socket" in out.stdout else ()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DORA_DASH_")}
    # a page loads without the API: the layout asks it nothing until the browser calls back
    return {**env, "DORA_API_URL": "http://127.0.0.1:9", **extra}


def _all_at_once(url: str, paths: list[str]) -> list[int]:
    """GET every path at the same moment, each on its own connection (as a browser opens
    several), so that they spread over the workers; the status codes in order."""
    start = threading.Barrier(len(paths))

    def get(path: str) -> int:
        with httpx.Client(base_url=url, timeout=30) as http:
            start.wait()
            return http.get(path).status_code

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        return list(pool.map(get, paths))


def test_the_dashboard_serves_its_pages_under_gunicorn(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["-m", "gunicorn", APP, "--preload", f"--bind=127.0.0.1:{port}"]
    args += ["--workers=3", "--threads=4", *_quiet_options()]
    env = _env(DORA_DASH_HOST="127.0.0.1", DORA_DASH_PORT=str(port))
    proc = start_server(args, env, f"{url}/", tmp_path / "gunicorn.log")
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            page = http.get("/")
            assert page.status_code == 200, page.text
            assert page.headers["server"].startswith("gunicorn")  # not Werkzeug's dev server
            assert "<title>DoRA dashboard</title>" in page.text
            # What a browser does next: fetch every script at once. Workers that have not
            # served a request yet used to fail some of them (Dash registers its scripts
            # at a process's first request, and a second thread did not wait for that).
            scripts = re.findall(r'src="(/_dash-component-suites/[^"]+)"', page.text)
            assert len(scripts) > 5, page.text
            assert _all_at_once(url, (scripts * 8)[:24]) == [200] * 24
            # Dash itself answers: the app's layout and its callbacks, from either worker
            for _ in range(4):
                layout = http.get("/_dash-layout")
                assert layout.status_code == 200 and layout.json()["props"]["children"]
                deps = http.get("/_dash-dependencies")
                assert deps.status_code == 200 and len(deps.json()) > 5
            assert http.get("/", headers={"Host": "evil.example"}).status_code == 403
    finally:
        stop_server(proc)
    assert proc.returncode is not None
    log = (tmp_path / "gunicorn.log").read_text()
    assert "Booting worker" in log and "Traceback" not in log, log


def test_a_bad_setting_stops_gunicorn_with_one_line() -> None:
    bind = f"--bind=127.0.0.1:{free_port()}"
    out = subprocess.run(
        [sys.executable, "-m", "gunicorn", APP, "--preload", bind, *_quiet_options()],
        cwd=REPO_ROOT,
        env=_env(DORA_DASH_POLL_MS="often"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_refusal(out, "DORA_DASH_POLL_MS", "often")
