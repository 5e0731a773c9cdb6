"""`make run`'s entry point brings up API + dashboard and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import time

import httpx
import pytest

from tests.conftest import (
    assert_one_line_refusal,
    free_port,
    run_module,
    serve_in_thread,
    start_server,
)
from tests.dashboard.simulate import SimulatedRun


def _wait(url: str, timeout: float = 90.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=2.0)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _ignore_sigint() -> None:
    """What a non-interactive shell does to a background job (`make run &`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_serve_starts_both_and_stops_on_sigint(tmp_path) -> None:
    """Started with SIGINT ignored, as from a script in the background: it still stops on it."""
    api_port, dash_port = free_port(), free_port()
    env = {**os.environ, "DORA_DATA_DIR": str(tmp_path)}
    env.pop("DORA_ORPHAN_TIMEOUT_S", None)
    log = tmp_path / "serve.log"
    proc = start_server(
        ["-m", "backend.serve", "--api-port", str(api_port), "--dash-port", str(dash_port)],
        env,
        f"http://127.0.0.1:{api_port}/api/health",
        log,
        preexec_fn=_ignore_sigint,
    )
    try:
        health = _wait(f"http://127.0.0.1:{api_port}/api/health")
        assert health.json()["status"] == "ok"
        page = _wait(f"http://127.0.0.1:{dash_port}/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        # a run that a worker of its own reports to: it outlives the servers, and says so
        SimulatedRun(f"http://127.0.0.1:{api_port}", name="outlives").post([0])
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{dash_port}" in out
    assert f"run 1 keeps training (http://127.0.0.1:{dash_port}/runs/1)" in out
    assert "after 30 min (DORA_ORPHAN_TIMEOUT_S)" in out  # its environment does not set it
    # both children are gone: the ports are free again
    for port in (api_port, dash_port):
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
        except httpx.HTTPError:
            continue
        raise AssertionError(f"port {port} still answers after Ctrl-C")


@pytest.mark.parametrize(
    ("module", "variable", "value"),
    [
        ("backend", "DORA_MAX_JOBS", "abc"),
        ("backend", "DORA_MAX_QUEUED", "-1"),
        ("backend", "DORA_CANCEL_GRACE_S", "soon"),
        ("backend", "DORA_API_PORT", "70000"),
        ("backend.serve", "DORA_MAX_JOBS", "abc"),  # the API's, checked before it starts
        ("backend.serve", "DORA_API_PORT", "x"),
        ("backend.serve", "DORA_DASH_PORT", "99999"),
        ("backend.serve", "DORA_ORPHAN_TIMEOUT_S", "soon"),  # every worker would refuse it
    ],
)
def test_the_servers_stop_on_a_bad_variable_with_one_line(
    tmp_path, module, variable, value
) -> None:
    """`python -m backend` and `make run` (backend.serve): one line, exit 2, nothing started
    and no database opened."""
    env = {"PATH": "/usr/bin:/bin", "DORA_DATA_DIR": str(tmp_path), variable: value}
    out = run_module(module, env)
    assert_one_line_refusal(out, variable, value)
    assert out.stderr.startswith(f"error: {variable}=")
    assert out.stdout == ""
    assert not (tmp_path / "dora.db").exists()


def test_the_demo_job_starts_at_once_or_says_it_waits(tmp_path, capsys) -> None:
    """`make run --demo` posts its job to the API; it may be queued behind other jobs."""
    from backend.launcher import LocalProcessLauncher
    from backend.main import create_app
    from backend.serve import DEMO_JOB, _cancel_demo, _start_demo
    from backend.settings import Settings
    from tests.backend.conftest import STAND_IN

    script = tmp_path / "stand_in_worker.py"
    script.write_text(STAND_IN)  # the demo's name picks its "run until stopped" mode
    launcher = LocalProcessLauncher(argv_prefix=(sys.executable, str(script)))
    settings = Settings(data_dir=tmp_path / "data", max_jobs=1, watch_interval_s=0.1)
    with serve_in_thread(create_app(settings, launcher)) as api:
        _wait(f"{api}/api/health")
        dash = "http://127.0.0.1:8050"
        first = _start_demo(api, dash)
        assert capsys.readouterr().out.splitlines() == [
            f"demo job started: run {first}",
            f"  watch it   {dash}/runs/{first}",
        ]
        second = _start_demo(api, dash)  # the first holds the only slot
        assert capsys.readouterr().out.splitlines() == [
            f"demo job queued: run {second}, number 1 in line",
            f"  watch it   {dash}/runs/{second}",
        ]
        assert httpx.get(f"{api}/api/runs/{second}").json()["name"] == DEMO_JOB["name"]
        began = time.monotonic()
        _cancel_demo(api, second)  # never started: nothing to wait for
        assert time.monotonic() - began < 5
        _cancel_demo(api, first, wait_s=15)
        ended = httpx.get(f"{api}/api/runs/{first}").json()
        assert (ended["status"], ended["exit_code"]) == ("cancelled", -signal.SIGTERM)
        assert httpx.get(f"{api}/api/runs/{second}").json()["status"] == "cancelled"


@pytest.mark.parametrize(
    ("variable", "said"), [(None, "after 30 min"), ("90", "after 90 s"), ("7200", "after 120 min")]
)
def test_ctrl_c_quotes_the_orphan_timeout_the_workers_read(
    tmp_path, capsys, monkeypatch, variable, said
) -> None:
    """The line per run that outlives `make run` quotes DORA_ORPHAN_TIMEOUT_S when it is set,
    the 30-min default otherwise."""
    from backend.main import create_app
    from backend.serve import _say_what_outlives_us
    from backend.settings import Settings
    from dora_core.contracts.wire import orphan_timeout_s

    if variable is None:
        monkeypatch.delenv("DORA_ORPHAN_TIMEOUT_S", raising=False)
    else:
        monkeypatch.setenv("DORA_ORPHAN_TIMEOUT_S", variable)
    orphan_s = orphan_timeout_s()
    assert not isinstance(orphan_s, str)
    with serve_in_thread(create_app(Settings(data_dir=tmp_path))) as api:
        _wait(f"{api}/api/health")
        SimulatedRun(api, name="outlives").post([0])
        _say_what_outlives_us(api, "http://dash", skip=None, orphan_s=orphan_s)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("run 1 keeps training (http://dash/runs/1)")
    assert f"{said} (DORA_ORPHAN_TIMEOUT_S)" in lines[0]


@pytest.mark.parametrize(
    ("flag", "variable", "expected"),
    [
        (None, None, 1800.0),
        (None, "", 1800.0),  # set but empty: unset, like every DORA_ variable
        (None, "45.5", 45.5),
        ("10", "45.5", 10.0),  # the flag wins
        (None, "0", "DORA_ORPHAN_TIMEOUT_S='0': must be a number of seconds above 0"),
        (None, "inf", "DORA_ORPHAN_TIMEOUT_S='inf': must be a number of seconds above 0"),
        ("-3", None, "--orphan-timeout='-3': must be a number of seconds above 0"),
    ],
)
def test_the_orphan_timeout_is_read_once_for_worker_and_servers(flag, variable, expected) -> None:
    from dora_core.contracts.wire import orphan_timeout_s

    environ = {} if variable is None else {"DORA_ORPHAN_TIMEOUT_S": variable}
    assert orphan_timeout_s(flag, environ) == expected
