"""`make run`: start the API and the dashboard on loopback, optionally a demo job.

Both servers run as child processes in their own sessions: Ctrl-C reaches only
this process, which cancels the demo job while the API is still up and then
stops the servers in order.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
from pydantic import field_validator

from backend.settings import (
    EnvSettings,
    Port,
    Settings,
    SettingsError,
    blank_is_unset,
    exposure_error,
)
from dora_core.contracts.wire import orphan_timeout_s

# Small enough to show pruning within a minute or two on a 2-core laptop:
# the pruning phase starts at step 30 and the mask freezes at step 210.
DEMO_JOB = {
    "name": "demo: dora on minilm + rt-snippets",
    "model": "minilm",
    "dataset": "rt-snippets",
    "method": "dora",
    "target_rank": 4,
    "max_steps": 300,
    "batch_size": 16,
    "max_length": 64,
    "lr": 2e-3,
    "warmup_frac": 0.1,
    "final_frac": 0.3,
    "prune_interval": 5,
    "eval_every": 50,
    "max_dev_samples": 500,
}


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock.connect_ex((host, port)) != 0


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


class ServeSettings(EnvSettings):
    """What `make run` reads itself: ``DORA_<FIELD>``; the command line overrides them.

    The API and the dashboard read the rest of their variables in their own
    processes; ``main`` checks the API's first, so that a bad one stops
    `make run` with one line instead of an API that never comes up.
    """

    api_host: str = "127.0.0.1"
    api_port: Port = 8000
    dash_port: Port = 8050
    # sent with the demo job's launch and cancel when the API wants a token
    api_token: str | None = None

    @field_validator("api_port", "dash_port", mode="before")
    @classmethod
    def _numbers(cls, value: object) -> object:
        return blank_is_unset(value)


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _start_demo(api: str, dash_url: str, token: str | None = None) -> int | None:
    """Launch the demo job; its run id, so that Ctrl-C can cancel it again."""
    try:
        resp = httpx.post(f"{api}/api/jobs", json=DEMO_JOB, headers=_auth(token), timeout=30.0)
    except httpx.HTTPError as exc:
        print(f"demo job not started: {exc}")
        return None
    if resp.is_success:
        body = resp.json()
        run_id, place = body["run_id"], body["run"].get("queue_position")
        if place is None:
            print(f"demo job started: run {run_id}")
        else:  # other jobs of this API hold every worker slot (DORA_MAX_JOBS)
            print(f"demo job queued: run {run_id}, number {place} in line")
        print(f"  watch it   {dash_url}/runs/{run_id}", flush=True)
        return run_id
    print(f"demo job not started ({resp.status_code}): {resp.text[:300]}")
    return None


def _cancel_demo(api: str, run_id: int, wait_s: float = 30.0, token: str | None = None) -> None:
    """Jobs outlive an API restart on purpose; the demo is ours, so it stops with us.

    Waits (while the API is still up) for the worker to checkpoint, send its
    last telemetry and exit, so its run ends recorded rather than spooled. A
    demo still waiting in the job queue has no worker: cancelling it is all.
    """
    with contextlib.suppress(httpx.HTTPError):
        run = httpx.get(f"{api}/api/runs/{run_id}", timeout=5.0).json()
        resp = httpx.post(f"{api}/api/jobs/{run_id}/cancel", headers=_auth(token), timeout=10.0)
        if resp.status_code == 409 or run.get("queue_position") is not None:
            return  # it had already ended, or never started
        print("waiting for the demo job to checkpoint and exit...", flush=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if (
                httpx.get(f"{api}/api/runs/{run_id}", timeout=5.0).json().get("exit_code")
                is not None
            ):
                return
            time.sleep(0.5)


def _say_what_outlives_us(api: str, dash_url: str, skip: int | None, orphan_s: float) -> None:
    """Jobs started from the form keep training after Ctrl-C (a restarted API adopts them):
    say so, per run, with what becomes of it, so nobody is surprised by a busy CPU.
    ``orphan_s`` is the timeout their workers read from the same environment."""
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        for status in ("running", "queued"):
            resp = httpx.get(f"{api}/api/runs", params={"status": status, "limit": 100}, timeout=5)
            for run in resp.json()["items"]:
                if run["id"] == skip:
                    continue
                if status == "queued":
                    print(f"run {run['id']} stays queued: it starts when the API runs again")
                    continue
                where = f"{dash_url}/runs/{run['id']}"
                print(
                    f"run {run['id']} keeps training ({where}): run this again and the API "
                    f"takes it back; without an API it stops by itself, checkpointed, after "
                    f"{_duration(orphan_s)} (DORA_ORPHAN_TIMEOUT_S). To stop it with the servers, "
                    f"cancel it on its page before Ctrl-C",
                    flush=True,
                )


def _duration(seconds: float) -> str:
    """30 min, 90 s: what a person reads, not 1800.0."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:g} s"


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    try:
        settings = ServeSettings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    orphan_s = orphan_timeout_s()  # the workers read it too: a bad one would fail every job
    if isinstance(orphan_s, str):
        print(f"error: {orphan_s}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description="Run the DoRA API and dashboard on loopback.")
    parser.add_argument("--host", default=settings.api_host)
    parser.add_argument("--api-port", type=int, default=settings.api_port)
    parser.add_argument("--dash-port", type=int, default=settings.dash_port)
    parser.add_argument(
        "--demo", action="store_true", help="launch a demo DoRA job once the API is up"
    )
    args = parser.parse_args(argv)
    api = f"http://{args.host}:{args.api_port}"
    dash_url = f"http://{args.host}:{args.dash_port}"
    env = {
        **os.environ,
        "DORA_API_URL": api,
        "DORA_API_HOST": args.host,
        "DORA_API_PORT": str(args.api_port),
        "DORA_DASH_HOST": args.host,
        "DORA_DASH_PORT": str(args.dash_port),
    }
    refusal = exposure_error(args.host, settings.api_token)
    if refusal:  # the same rule as `python -m backend`
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:  # the API's own settings, as its process will read them
        Settings.from_env(env)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops cleanly too
    # and Ctrl-C / SIGINT even where it started ignored (a shell script's `make run &`)
    signal.signal(signal.SIGINT, _interrupt)

    for port in (args.api_port, args.dash_port):
        if not _port_free(args.host, port):
            print(
                f"error: {args.host}:{port} is in use; free it or set DORA_API_PORT / DORA_DASH_PORT",
                file=sys.stderr,
            )
            return 2

    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "backend.main:app",
                "--host",
                args.host,
                "--port",
                str(args.api_port),
                "--log-level",
                "warning",
                # live streams (SSE) stay open until a run ends: do not wait for them
                "--timeout-graceful-shutdown",
                "5",
            ],
            env=env,
            start_new_session=True,
        ),
        subprocess.Popen([sys.executable, "-m", "dashboard.app"], env=env, start_new_session=True),
    ]
    demo_run = None
    try:
        if not _wait_http(f"{api}/api/health", procs[0]):
            print("error: the API did not come up; see its log above", file=sys.stderr)
            return 1
        if not _wait_http(dash_url, procs[1]):
            print("error: the dashboard did not come up; see its log above", file=sys.stderr)
            return 1
        print(
            f"\n  API        {api}/docs\n  Dashboard  {dash_url}\n\nPress Ctrl-C to stop.\n",
            flush=True,
        )
        if args.demo:
            demo_run = _start_demo(api, dash_url, settings.api_token)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a server exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    finally:
        if demo_run is not None and procs[0].poll() is None:
            _cancel_demo(api, demo_run, token=settings.api_token)
        if procs and procs[0].poll() is None:
            _say_what_outlives_us(api, dash_url, skip=demo_run, orphan_s=orphan_s)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
