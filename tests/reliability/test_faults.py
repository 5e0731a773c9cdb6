"""Faults with real processes: a real API (``python -m backend``), real ``dora train``
workers on MiniLM, a real SQLite file. After each fault the database must hold every
record of the worker's own ``metrics.jsonl`` exactly once (``assert_stored_exactly_once``).

Each test waits for events (steps in the database, lines in the worker's files),
not for fixed times, so a slow shared machine makes it slower, not flaky.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from backend.settings import Settings
from dora_core.worker.train import checkpoint
from tests.backend.conftest import MODULES, row_counts, scores_record
from tests.conftest import RunTokens, wait_until
from tests.reliability.helpers import (
    TINY_JOB,
    ApiServer,
    assert_stored_exactly_once,
    last_step,
    read_records,
    spool_items,
    start_worker,
    stored_records,
)

TOKEN = "reliability-master-token"
WORKER_TIMEOUT = 240  # seconds for a tiny job on a loaded 2-core machine


def _client(api: ApiServer) -> httpx.Client:
    """A fresh client (a restarted API must not meet connections kept from the last one);
    it sends each run's writer token that the server's runs were created with."""
    return api.run_tokens.install(httpx.Client(base_url=api.url, timeout=30, headers=api.auth()))


def _step(http: httpx.Client, run_id: int) -> int:
    return http.get(f"/api/runs/{run_id}").json()["step"] or 0


def _launch(api: ApiServer, **fields: object) -> tuple[int, Path]:
    with _client(api) as http:
        resp = http.post("/api/jobs", json={**TINY_JOB, **fields})
    assert resp.status_code == 201, resp.text
    run_id = resp.json()["run_id"]
    return run_id, api.data_dir / "runs" / str(run_id)


def _stored_step(api: ApiServer, run_id: int) -> int:
    """The run's last stored step, from the file (the API is down)."""
    with sqlite3.connect(api.db_path, timeout=30) as conn:
        return conn.execute("SELECT step FROM runs WHERE id = ?", (run_id,)).fetchone()[0] or 0


def _pid(api: ApiServer, run_id: int) -> int:
    return int(api.worker_handles()[run_id].split(":")[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _train_on_while_down(run_dir: Path, stored: int, alive: Callable[[], bool]) -> None:
    """The worker trains past the last step the API stored, and spools, while nothing
    answers it (after its last step it waits 15 s for the API before it gives up)."""
    wait_until(
        "training to go on with the API down",
        lambda: last_step(run_dir) >= stored + 3 and spool_items(run_dir) >= 1,
    )
    assert alive(), "the worker stopped while the API was down"


@pytest.mark.slow
def test_api_down_for_a_while_the_worker_spools_and_replays_everything_once(
    api_factory, hand_workers, tmp_path
) -> None:
    """A worker started by hand (``dora train job.json --api URL``) outlives an API outage."""
    api = api_factory(token=TOKEN)
    run_dir = tmp_path / "run"
    job = tmp_path / "job.json"
    job.write_text(json.dumps({**TINY_JOB, "name": "outage", "output_dir": str(run_dir)}))
    worker = start_worker(
        [str(job), "--api", api.url], tmp_path / "worker.log", DORA_API_TOKEN=TOKEN
    )
    hand_workers.append(worker)
    state = run_dir / "telemetry-state.json"
    run_id = wait_until(
        "the worker to create its run",
        lambda: state.exists() and json.loads(state.read_text()).get("run_id"),
    )
    with _client(api) as http:
        wait_until("two steps in the database", lambda: _step(http, run_id) >= 2)
    api.stop()
    _train_on_while_down(run_dir, _stored_step(api, run_id), lambda: worker.poll() is None)
    api.start()  # same port, same database

    assert worker.wait(timeout=WORKER_TIMEOUT) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    with _client(api) as http:
        run = http.get(f"/api/runs/{run_id}").json()
        assert (run["status"], run["step"]) == ("completed", TINY_JOB["max_steps"])
        assert_stored_exactly_once(api, http, run_id, run_dir)


@pytest.mark.slow
def test_api_away_until_the_worker_gave_up_then_restarted_takes_in_its_spool(
    api_factory,
) -> None:
    """The worker ends (exit 0, batches left in its spool) while the API is down;
    the restarted API stores what the spool holds, and the run is complete."""
    api = api_factory(token=TOKEN)
    run_id, run_dir = _launch(api, name="outlived")
    with _client(api) as http:
        wait_until("two steps in the database", lambda: _step(http, run_id) >= 2)
    pid = _pid(api, run_id)
    api.kill()
    # after its last step the worker waits 15 s for the API, then exits
    wait_until("the worker to give up and exit", lambda: not _alive(pid), timeout=WORKER_TIMEOUT)
    assert spool_items(run_dir) >= 1 and _stored_step(api, run_id) < TINY_JOB["max_steps"]
    api.start()

    with _client(api) as http:
        run = http.get(f"/api/runs/{run_id}").json()  # reconciled before the API serves
        assert (run["status"], run["step"]) == ("completed", TINY_JOB["max_steps"])
        assert_stored_exactly_once(api, http, run_id, run_dir, spool_left=True)


@pytest.mark.slow
def test_api_killed_while_a_job_runs_then_restarted(api_factory) -> None:
    """SIGKILL the API under a launched job: the worker goes on, a new API adopts it."""
    api = api_factory(token=TOKEN)
    run_id, run_dir = _launch(api, name="api-crash")
    with _client(api) as http:
        wait_until("two steps in the database", lambda: _step(http, run_id) >= 2)
    pid = _pid(api, run_id)
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
        if "=" in item
    )
    ingest_token = environ["DORA_INGEST_TOKEN"]
    api.kill()
    _train_on_while_down(run_dir, _stored_step(api, run_id), lambda: _alive(pid))
    api.start()

    with _client(api) as http:
        adopted = http.get(f"/api/runs/{run_id}").json()
        # reconciled at start-up: the worker is alive, so the run is still running
        assert (adopted["status"], adopted["exit_code"], adopted["error"]) == (
            "running",
            None,
            None,
        )
        wait_until(
            "the adopted job to complete",
            lambda: http.get(f"/api/runs/{run_id}").json()["status"] == "completed",
            timeout=WORKER_TIMEOUT,
        )
        wait_until("the worker to exit", lambda: not _alive(pid))
        assert_stored_exactly_once(api, http, run_id, run_dir)

        # The run's ingest token never left the worker's environment ...
        files = [api.db_path, api.db_path.with_name("dora.db-wal"), *api.logs]
        files += [p for p in run_dir.rglob("*") if p.is_file()]
        leaked = [p for p in files if p.exists() and ingest_token.encode() in p.read_bytes()]
        assert leaked == []
        # ... and it writes to its own run only.
        other = http.post(
            "/api/runs", json={"config": {"model": "minilm", "dataset": "rt-snippets"}}
        ).json()["id"]
        as_worker = {"Authorization": f"Bearer {ingest_token}"}
        refused = [
            ("POST", f"/api/runs/{other}/telemetry", {"seq": 0}),
            ("POST", f"/api/runs/{other}/register", {"modules": MODULES}),
            ("POST", "/api/jobs", TINY_JOB),
            ("POST", f"/api/jobs/{run_id}/cancel", None),
            ("DELETE", f"/api/runs/{run_id}", None),
        ]
        for method, path, body in refused:
            resp = http.request(method, path, json=body, headers=as_worker)
            assert resp.status_code == 403, (path, resp.text)
        seq = json.loads((run_dir / "telemetry-state.json").read_text())["next_seq"]
        own = http.post(f"/api/runs/{run_id}/telemetry", json={"seq": seq}, headers=as_worker)
        assert own.status_code == 200


@pytest.mark.slow
def test_worker_killed_is_failed_with_its_log_then_resumes_into_the_same_run(
    api_factory, hand_workers, tmp_path
) -> None:
    """SIGKILL is also how the kernel's OOM killer ends a process: nothing runs on the way out."""
    api = api_factory(token=TOKEN)
    run_id, run_dir = _launch(api, name="killed", checkpoint_every=4)
    pid = _pid(api, run_id)
    wait_until(
        "a checkpoint at step 8", lambda: max(checkpoint.list_steps(run_dir), default=0) >= 8
    )
    os.kill(pid, signal.SIGKILL)

    with _client(api) as http:
        run = wait_until(
            "the launcher to record the exit",
            lambda: (r := http.get(f"/api/runs/{run_id}").json())["exit_code"] is not None and r,
        )
        log = (run_dir / "worker.log").read_text().splitlines()
        last_line = next(line.strip() for line in reversed(log) if line.strip())
        assert (run["status"], run["exit_code"]) == ("failed", -9)
        assert run["error"] == (
            "the worker was killed by SIGKILL (the kernel's out-of-memory killer sends it too): "
            f"{last_line}"
        )
        [failed] = http.get(f"/api/runs/{run_id}/events", params={"kind": "failed"}).json()
        assert failed["data"] == {"exit_code": -9, "log_tail": log[-20:]}
        killed_at = last_step(run_dir)
        assert killed_at < TINY_JOB["max_steps"]

        # `dora train --resume` by hand; the run's ingest token died with its worker, so the
        # API token it is (docs/protocol.md); the run id comes from the run dir.
        resumed = start_worker(
            ["--resume", str(run_dir)],
            tmp_path / "resume.log",
            DORA_API_URL=api.url,
            DORA_API_TOKEN=TOKEN,
        )
        hand_workers.append(resumed)
        assert resumed.wait(timeout=WORKER_TIMEOUT) == 0, (tmp_path / "resume.log").read_text()
        run = http.get(f"/api/runs/{run_id}").json()
        assert (run["status"], run["error"], run["step"]) == (
            "completed",
            None,
            TINY_JOB["max_steps"],
        )
        stored = assert_stored_exactly_once(api, http, run_id, run_dir, extra_events=1)
    assert stored["ours"][0][1] == "failed"  # the launcher's record of the kill
    logs = [e[2] for e in stored["sent"]["events"] if e[1] == "log"]
    resumed_at = int(logs[-1].removeprefix("resumed from the checkpoint at step "))
    assert 8 <= resumed_at <= killed_at  # from the checkpoint, not from scratch
    steps = [r["step"] for r in read_records(run_dir) if r["type"] == "scores"]
    assert steps == sorted(set(steps))  # the regenerated steps were not reported again


def _pause(pid: int, paused: bool) -> None:
    """SIGSTOP / SIGCONT a launched worker (it leads its own process group)."""
    os.killpg(pid, signal.SIGSTOP if paused else signal.SIGCONT)


@pytest.mark.slow
def test_a_worker_that_meets_another_api_on_its_port_is_refused_and_reaches_its_own_later(
    api_factory, tmp_path
) -> None:
    """The failure this closes: API A launched a worker and stopped; API B, with its own
    database, started on A's port; the worker went on reporting into B's run 1 (same id, no
    token checked without DORA_API_TOKEN), B accepted it and B's own data was mixed.

    Now B refuses the worker (another instance) before storing anything, B's run keeps
    exactly its own data, the worker keeps its spool, and once A is back on its port A
    holds every record of the worker exactly once. The worker is paused (SIGSTOP) while
    the APIs change places, so it is still training when each one answers it."""
    a = api_factory()  # no DORA_API_TOKEN: the setting that used to accept anything
    run_id, run_dir = _launch(a, name="foreign", max_steps=48)
    with _client(a) as http:
        a_instance = http.get("/api/health").json()["instance"]
        wait_until("two steps at API A", lambda: _step(http, run_id) >= 2, timeout=120)
    pid = _pid(a, run_id)
    _pause(pid, True)
    b = ApiServer(tmp_path / "data-b", a.port)
    b.data_dir.mkdir()
    a.stop()
    try:
        b.start()  # another database, the same address
        with _client(b) as http:
            b_instance = http.get("/api/health").json()["instance"]
            assert b_instance != a_instance
            assert _registered_run(http) == run_id  # B's own run with the worker's run id
            for seq in range(2):
                http.post(
                    f"/api/runs/{run_id}/telemetry",
                    json={"seq": seq, "scores": [scores_record(seq + 1)]},
                ).raise_for_status()
            b_before = stored_records(http, run_id)
            b_rows = row_counts(f"sqlite:///{b.db_path}")
            spooled_before = spool_items(run_dir)
            _pause(pid, False)
            log = run_dir / "worker.log"
            refusal = f"is instance {b_instance}, not instance {a_instance}"
            wait_until("API B to refuse the worker", lambda: refusal in log.read_text(), 60)
            _pause(pid, True)
            # B holds exactly its own run, as it was; nothing of the worker's got in
            assert http.get("/api/runs").json()["total"] == 1
            assert stored_records(http, run_id) == b_before
            assert row_counts(f"sqlite:///{b.db_path}") == b_rows
            assert http.get(f"/api/runs/{run_id}").json()["status"] == "running"
        assert spool_items(run_dir) >= max(1, spooled_before)  # kept, not counted as sent
    finally:
        b.stop()
    a.start()  # back on its port, its own database
    _pause(pid, False)
    with _client(a) as http:
        wait_until(
            "the worker's run to complete at API A",
            lambda: http.get(f"/api/runs/{run_id}").json()["status"] == "completed",
            timeout=WORKER_TIMEOUT,
        )
        wait_until("the worker to exit", lambda: not _alive(pid), timeout=60)
        run = http.get(f"/api/runs/{run_id}").json()
        assert (run["step"], run["error"]) == (48, None)
        assert_stored_exactly_once(a, http, run_id, run_dir)


# --- a locked SQLite file ---------------------------------------------------------------------

READER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
count = lambda: conn.execute("SELECT count(*) FROM score_steps").fetchone()[0]
conn.execute("BEGIN")
print(count(), flush=True)           # the read transaction now holds a snapshot
for line in sys.stdin:               # "count": read again inside it; anything else: end it
    if line.strip() != "count":
        break
    print(count(), flush=True)
conn.execute("COMMIT")
print(count(), flush=True)
"""

WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")      # the write lock, as a migration or a sqlite3 shell would
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def _registered_run(http: httpx.Client) -> int:
    RunTokens.of(http)  # keeps the run's writer token for its later calls
    run_id = http.post(
        "/api/runs", json={"config": {"model": "minilm", "dataset": "rt-snippets"}}
    ).json()["id"]
    http.post(f"/api/runs/{run_id}/register", json={"modules": MODULES}).raise_for_status()
    return run_id


@pytest.mark.slow
def test_a_reader_holding_the_file_for_seconds_does_not_hold_up_ingest(api_factory) -> None:
    api = api_factory()
    with _client(api) as http:
        run_id = _registered_run(http)
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(api.db_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert reader.stdout.readline().strip() == "0"
            started = time.monotonic()
            for seq in range(3):
                sent = time.monotonic()
                resp = http.post(
                    f"/api/runs/{run_id}/telemetry",
                    json={"seq": seq, "scores": [scores_record(seq + 1)]},
                )
                assert resp.status_code == 200, resp.text
                assert time.monotonic() - sent < 5  # WAL: a reader never blocks the writer
                time.sleep(1.0)
            reader.stdin.write("count\n")
            reader.stdin.flush()
            assert reader.stdout.readline().strip() == "0"  # its snapshot, held throughout
            assert time.monotonic() - started >= 3
            reader.stdin.write("end\n")
            reader.stdin.flush()
            assert reader.stdout.readline().strip() == "3"
            assert reader.wait(timeout=10) == 0
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
        assert http.get(f"/api/runs/{run_id}/steps").json()["steps"] == [1, 2, 3]


@pytest.mark.slow
def test_ingest_waits_for_a_write_lock_held_for_seconds_and_reads_go_on(api_factory) -> None:
    api = api_factory()
    with _client(api) as http:
        run_id = _registered_run(http)
        http.post(
            f"/api/runs/{run_id}/telemetry", json={"seq": 0, "scores": [scores_record(1)]}
        ).raise_for_status()
        holder = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(api.db_path), "3"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout.readline().strip() == "locked"
            started = time.monotonic()
            steps = http.get(f"/api/runs/{run_id}/steps")  # the dashboard keeps reading
            assert steps.json()["steps"] == [1] and time.monotonic() - started < 2
            resp = http.post(
                f"/api/runs/{run_id}/telemetry", json={"seq": 1, "scores": [scores_record(2)]}
            )
            waited = time.monotonic() - started
            assert holder.wait(timeout=30) == 0
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        assert resp.status_code == 200, resp.text
        assert waited >= 2.5  # it waited for the lock (busy timeout 30 s) instead of failing
        assert http.get(f"/api/runs/{run_id}/steps").json()["steps"] == [1, 2]


def test_a_lock_held_past_the_busy_timeout_is_503_and_stores_nothing(tmp_path) -> None:
    """Beyond the busy timeout the answer says "retry" (the reporter does), not a 500."""
    settings = Settings(data_dir=tmp_path / "data", sqlite_busy_timeout_s=0.3)
    with TestClient(create_app(settings)) as client:
        run_id = _registered_run(client)
        before = row_counts(settings.database_url)
        holder = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(settings.data_dir / "dora.db"), "2"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout.readline().strip() == "locked"
            batch = {"seq": 0, "scores": [scores_record(1)]}
            resp = client.post(f"/api/runs/{run_id}/telemetry", json=batch)
            assert holder.wait(timeout=30) == 0
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
        assert "retry" in resp.json()["detail"]
        assert row_counts(settings.database_url) == before
        again = client.post(f"/api/runs/{run_id}/telemetry", json=batch)
        assert again.status_code == 200 and again.json()["duplicate"] is False


def test_a_diverged_step_loses_only_what_the_api_would_refuse(tmp_path) -> None:
    """NaN scores (a diverged run) are left out alone; the rest of their batch arrives,
    and an event's NaN data becomes null (a ``finished`` event must still get through)."""
    from dora_core.worker.telemetry import Reporter, read_metrics
    from tests.worker.fake_api import FakeApi

    api = FakeApi().start()
    try:
        reporter = Reporter(tmp_path, api.url, run_id=1, flush_interval=0.05)
        reporter.scores(3, {"m": [0.25, 0.75]}, {"m": [1, 1]})
        reporter.scores(4, {"m": [float("nan"), 0.5]}, {"m": [1, 1]})
        reporter.budget(4, target=2, live=2, b=1.0)
        reporter.scalars(4, {"loss": float("nan"), "lr": 1e-3})
        reporter.event(4, "finished", "dev accuracy 0.5", {"accuracy": 0.5, "loss": float("nan")})
        assert reporter.close(timeout=30) is True
    finally:
        api.stop()
    expected = [
        {"type": "scores", "step": 3, "values": {"m": [0.25, 0.75]}, "masks": {"m": [1, 1]}},
        {"type": "budget", "step": 4, "target": 2, "live": 2, "b": 1.0},
        {"type": "scalars", "step": 4, "values": {"lr": 1e-3}},
        {
            "type": "event",
            "step": 4,
            "kind": "finished",
            "message": "dev accuracy 0.5",
            "data": {"accuracy": 0.5, "loss": None},
        },
    ]
    assert read_metrics(tmp_path) == expected
    assert sorted(api.records(), key=str) == sorted(expected, key=str)
