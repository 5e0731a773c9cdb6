"""Two API processes on one database share one job queue.

Two real servers (uvicorn, ``tests/backend/stand_in_api.py``: the real app
with a stand-in worker) on one database and one data dir, as behind a load
balancer. Jobs are posted to both; the second server starts while the first
is launching. Each stand-in leaves a marker file when it starts and one when
it ends, named by its run and pid, so a job started twice leaves two. Run on
SQLite (one file) and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, start_server, stop_server, wait_until

pytestmark = [pytest.mark.both_databases, pytest.mark.slow]

JOB = {"model": "minilm", "dataset": "rt-snippets", "max_steps": 20, "target_rank": 4}
MAX_JOBS = 2  # each server's DORA_MAX_JOBS: the cap holds for both together
RUN_S = 0.4  # how long an "ok" stand-in runs

# Notes its start (run, pid, which API launched it), runs a while, notes its end.
WORKER = textwrap.dedent(
    f"""
    import json, os, sys, time
    job = json.load(open(sys.argv[2]))
    marks = os.path.join(os.environ["DORA_TEST_MARKS"], f"{{os.environ['DORA_RUN_ID']}}-{{os.getpid()}}")
    note = {{"run": int(os.environ["DORA_RUN_ID"]), "pid": os.getpid(),
            "api": os.environ["DORA_API_URL"], "start": time.time()}}
    with open(marks + ".start", "w") as f:
        json.dump(note, f)
    time.sleep(600 if job["name"] == "sleep" else {RUN_S})
    with open(marks + ".end", "w") as f:
        json.dump({{**note, "end": time.time()}}, f)
    """
)


@pytest.fixture
def two_apis(tmp_path: Path, database_url: str):
    """Start the first server; ``second()`` starts the other; both stopped by the test."""
    marks = tmp_path / "marks"
    marks.mkdir()
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DORA_DATA_DIR": str(tmp_path / "data"),
        "DORA_MAX_JOBS": str(MAX_JOBS),
        "DORA_TEST_WORKER": str(worker),
        "DORA_TEST_WATCH_S": "0.2",
        "DORA_TEST_MARKS": str(marks),
    }
    for key in ("DORA_API_URL", "DORA_API_TOKEN"):
        env.pop(key, None)
    procs = []

    def start(name: str) -> str:
        port = free_port()
        args = ["-m", "uvicorn", "--factory", "tests.backend.stand_in_api:app"]
        args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        url = f"http://127.0.0.1:{port}"
        procs.append(start_server(args, env, f"{url}/api/health", tmp_path / f"{name}.log"))
        return url

    try:
        yield start, marks
    finally:
        for proc in procs:
            stop_server(proc)
        for start_mark in marks.glob("*.start"):  # a worker left running (a failing test)
            pid = json.loads(start_mark.read_text())["pid"]
            if not (marks / f"{start_mark.stem}.end").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def _post(url: str, name: str) -> int:
    resp = httpx.post(f"{url}/api/jobs", json={**JOB, "name": name}, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["run_id"]


def _run(url: str, run_id: int) -> dict:
    return httpx.get(f"{url}/api/runs/{run_id}", timeout=30).json()


def _final(url: str, run_id: int) -> dict:
    return wait_until(
        f"run {run_id} to end",
        lambda: (
            (r := _run(url, run_id))["status"] in ("completed", "failed", "cancelled")
            and (r["exit_code"] is not None or r["error"] is not None)
            and r
        ),
        timeout=120,  # generous: only a failing test waits it out
    )


def _notes(marks: Path, suffix: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(marks.glob(f"*.{suffix}"))]


def test_two_apis_start_each_queued_job_once_within_one_cap(two_apis) -> None:
    start, marks = two_apis
    first = start("first")
    with ThreadPoolExecutor(5) as pool:
        posted = [pool.submit(_post, first, "ok") for _ in range(5)]
        second = start("second")  # its start-up pass runs while the first is launching
        posted += [pool.submit(_post, second, "ok") for _ in range(5)]
        ids = sorted(f.result() for f in posted)
    assert len(set(ids)) == 10
    for run_id in ids:  # none lost: every job ran to its end, its exit seen by an API
        ended = _final(second if run_id % 2 else first, run_id)
        assert (ended["status"], ended["exit_code"], ended["error"]) == ("completed", 0, None)
    # The race may leave every launch to one server (the one whose worker just ended refills
    # the slot first); with nothing running, a job is started by the server it was posted
    # to, in the request: one to each, so that both servers surely launch.
    for url in (first, second):
        run_id = _post(url, "ok")
        ids.append(run_id)
        ended = _final(url, run_id)
        assert (ended["status"], ended["exit_code"], ended["error"]) == ("completed", 0, None)
    starts = _notes(marks, "start")
    assert sorted(n["run"] for n in starts) == ids  # each started exactly once
    assert {n["api"] for n in starts} == {first, second}  # and both servers launched some
    # never more than MAX_JOBS workers at once, across both servers
    ends = _notes(marks, "end")
    assert len(ends) == 12
    edges = sorted([(n["start"], 1) for n in ends] + [(n["end"], -1) for n in ends])
    running = [sum(d for _, d in edges[: i + 1]) for i in range(len(edges))]
    assert max(running) <= MAX_JOBS, running


def test_a_dead_worker_is_marked_once_by_the_api_that_started_it(two_apis) -> None:
    """Both servers watch the database's unfinished workers; only the one that launched a
    worker (its parent, which knows the exit status) records its death."""
    start, marks = two_apis
    first, second = start("first"), start("second")
    for url in (first, second):
        run_id = _post(url, "sleep")
        note = wait_until(
            f"run {run_id}'s worker to start",
            lambda run_id=run_id: next(
                (n for n in _notes(marks, "start") if n["run"] == run_id), None
            ),
            timeout=120,
        )
        time.sleep(0.5)  # both servers have seen it running
        os.kill(note["pid"], signal.SIGKILL)
        for reader in (first, second):
            ended = _final(reader, run_id)
            assert (ended["status"], ended["exit_code"]) == ("failed", -9), ended
            assert ended["error"].startswith("the worker was killed by SIGKILL"), ended
        events = httpx.get(f"{second}/api/runs/{run_id}/events", timeout=30).json()
        assert [e["kind"] for e in events] == ["failed"]
        assert events[0]["data"]["exit_code"] == -9
