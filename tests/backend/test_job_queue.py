"""The job queue: launches wait for one of DORA_MAX_JOBS worker slots, oldest first.

Workers are the conftest stand-in started by the real launcher, wrapped so that
each start is noted along with what the database and the launcher's own
children looked like at that moment. Real SQLite, real processes.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.db import Database
from backend.launcher import LaunchSpec, LocalProcessLauncher
from backend.main import create_app
from backend.models import Run
from backend.services.jobs import JobQueue
from backend.settings import Settings, SettingsError
from tests.backend.conftest import env_of, row_counts
from tests.backend.test_jobs import JOB, _final, _launch
from tests.conftest import wait_until

pytestmark = pytest.mark.both_databases  # database behaviour: run on PostgreSQL too


class Recording(LocalProcessLauncher):
    """The real launcher, noting for every start the run, how many of the workers it
    started before were still alive, and the run's row as the database held it then."""

    def __init__(self, argv_prefix: tuple[str, ...], database_url: str):
        super().__init__(argv_prefix)
        self.db = Database(database_url)
        self.starts: list[dict] = []
        self.handles: list[str] = []
        self.fail_for: set[int] = set()  # run ids whose start raises OSError

    def start(self, spec: LaunchSpec) -> str:
        alive = sum(1 for handle in list(self.handles) if self.poll(handle) is None)
        with self.db.reader() as session:
            row = session.get(Run, spec.run_id)
            state = None if row is None else (row.status, row.ingest_token_hash is not None)
        self.starts.append({"run_id": spec.run_id, "alive": alive, "row": state})
        if spec.run_id in self.fail_for:
            raise OSError("exec format error (the test's doing)")
        handle = super().start(spec)
        self.handles.append(handle)
        return handle

    @property
    def started(self) -> list[int]:
        return [s["run_id"] for s in self.starts]

    def close(self) -> None:
        for handle in self.handles:  # reap what a test left running
            self.stop(handle, grace_s=0)
            self.wait(handle, timeout_s=5)
        self.db.dispose()


@pytest.fixture
def recording(stand_in: LocalProcessLauncher, database_url: str):
    launcher = Recording(stand_in.argv_prefix, database_url)
    yield launcher
    launcher.close()


def _run(client: TestClient, run_id: int) -> dict:
    return client.get(f"/api/runs/{run_id}").json()


def _row(client: TestClient, run_id: int) -> Run | None:
    with client.app.state.db.reader() as session:
        return session.get(Run, run_id)


def _started(client: TestClient, run_id: int) -> bool:
    row = _row(client, run_id)
    return row is not None and row.worker_handle is not None


def _settle(client: TestClient) -> None:
    """Let the watcher make a few passes (it runs every 0.1 s in these tests)."""
    interval = client.app.state.settings.watch_interval_s
    time.sleep(max(0.5, 5 * interval))


def test_a_second_job_waits_its_turn_and_jobs_start_in_creation_order(
    make_settings, recording
) -> None:
    with TestClient(create_app(make_settings(max_jobs=1), recording)) as client:
        first = _launch(client, "sleep")
        assert first["queue_position"] is None and _started(client, first["id"])
        second, third = _launch(client, "sleep"), _launch(client, "ok")
        for run, place in ((second, 1), (third, 2)):
            assert (run["status"], run["queue_position"]) == ("queued", place)
            row = _row(client, run["id"])
            # queued: its job file is written, but there is no worker, token or log yet
            assert row.worker_handle is None and row.ingest_token_hash is None
            run_dir = Path(run["config"]["output_dir"])
            assert json.loads((run_dir / "job.json").read_text())["name"] == run["name"]
            assert not (run_dir / "worker.log").exists()
        listed = {r["id"]: r["queue_position"] for r in client.get("/api/runs").json()["items"]}
        assert listed == {first["id"]: None, second["id"]: 1, third["id"]: 2}
        env_of(client, first["id"])
        _settle(client)
        assert recording.started == [first["id"]]  # the slot is taken: nothing else starts

        client.post(f"/api/jobs/{first['id']}/cancel")
        _final(client, first["id"])
        wait_until("the second job to start", lambda: _started(client, second["id"]), timeout=15)
        assert _run(client, second["id"])["queue_position"] is None
        assert _run(client, third["id"])["queue_position"] == 1
        env_of(client, second["id"])
        _settle(client)
        assert recording.started == [first["id"], second["id"]]

        client.post(f"/api/jobs/{second['id']}/cancel")
        ended = _final(client, third["id"])
        assert (ended["status"], ended["exit_code"], ended["queue_position"]) == (
            "completed",
            0,
            None,
        )
        assert recording.started == [first["id"], second["id"], third["id"]]
        assert [s["alive"] for s in recording.starts] == [0, 0, 0]


def test_the_cap_holds_when_many_launches_arrive_at_once(make_settings, recording) -> None:
    """Twelve clients post at the same moment while short jobs end and free their slots."""
    with TestClient(create_app(make_settings(max_jobs=2), recording)) as client:
        barrier = threading.Barrier(12)

        def post(_: int) -> int:
            barrier.wait()
            resp = client.post("/api/jobs", json={**JOB, "name": "ok"})
            assert resp.status_code == 201, resp.text
            return resp.json()["run_id"]

        with ThreadPoolExecutor(12) as pool:
            ids = sorted(pool.map(post, range(12)))
        for run_id in ids:
            assert _final(client, run_id)["status"] == "completed"
    assert sorted(recording.started) == ids
    assert recording.started == ids  # first come, first started
    assert max(s["alive"] for s in recording.starts) <= 1  # each start found a free slot


def test_a_full_queue_is_429_and_creates_nothing(make_settings, recording, database_url) -> None:
    settings = make_settings(max_jobs=1, max_queued=2)
    with TestClient(create_app(settings, recording)) as client:
        running = _launch(client, "sleep")
        waiting = [_launch(client, "sleep"), _launch(client, "sleep")]
        before = row_counts(database_url)
        refused = client.post("/api/jobs", json={**JOB, "name": "sleep"})
        assert refused.status_code == 429
        detail = refused.json()["detail"]
        assert "queue is full" in detail and "DORA_MAX_QUEUED=2" in detail
        assert row_counts(database_url) == before
        assert client.get("/api/runs").json()["total"] == 3
        assert sorted(int(p.name) for p in settings.runs_dir.iterdir()) == [
            running["id"],
            *(w["id"] for w in waiting),
        ]
        # a waiting job that is cancelled leaves the queue: there is room again
        assert client.post(f"/api/jobs/{waiting[0]['id']}/cancel").status_code == 200
        again = _launch(client, "sleep")
        assert (
            again["queue_position"] == 2 and _run(client, waiting[1]["id"])["queue_position"] == 1
        )
        assert recording.started == [running["id"]]


def test_a_cancelled_queued_job_never_starts(make_settings, recording) -> None:
    with TestClient(create_app(make_settings(max_jobs=1), recording)) as client:
        running = _launch(client, "sleep")
        queued = _launch(client, "ok")
        resp = client.post(f"/api/jobs/{queued['id']}/cancel")
        assert resp.status_code == 200
        cancelled = resp.json()
        assert (cancelled["status"], cancelled["queue_position"]) == ("cancelled", None)
        assert cancelled["finished_at"] is not None and cancelled["exit_code"] is None
        [event] = client.get(f"/api/runs/{queued['id']}/events").json()
        assert event["kind"] == "cancelled" and "before it started" in event["message"]
        again = client.post(f"/api/jobs/{queued['id']}/cancel")
        assert again.status_code == 409 and "already cancelled" in again.json()["detail"]

        client.post(f"/api/jobs/{running['id']}/cancel")
        _final(client, running["id"])
        after = _launch(client, "ok")  # the freed slot goes to the next job, not the cancelled one
        assert _final(client, after["id"])["status"] == "completed"
        _settle(client)
        assert recording.started == [running["id"], after["id"]]
        row = _row(client, queued["id"])
        assert (row.status, row.worker_handle, row.ingest_token_hash) == ("cancelled", None, None)
        assert not (Path(queued["config"]["output_dir"]) / "worker.log").exists()


def test_a_deleted_queued_job_never_starts(make_settings, recording) -> None:
    settings = make_settings(max_jobs=1)
    with TestClient(create_app(settings, recording)) as client:
        running = _launch(client, "sleep")
        queued = _launch(client, "ok")
        assert (settings.runs_dir / str(queued["id"]) / "job.json").is_file()
        assert client.delete(f"/api/runs/{queued['id']}").status_code == 204
        assert client.get(f"/api/runs/{queued['id']}").status_code == 404
        assert not (settings.runs_dir / str(queued["id"])).exists()
        client.post(f"/api/jobs/{running['id']}/cancel")
        _final(client, running["id"])
        after = _launch(client, "ok")
        assert _final(client, after["id"])["status"] == "completed"
        _settle(client)
        assert recording.started == [running["id"], after["id"]]


def test_cancels_and_deletes_racing_the_scheduler_never_start_a_removed_job(
    make_settings, recording
) -> None:
    """While slots free up and the scheduler starts the next jobs, other clients cancel and
    delete queued ones: every start must find its run still queued (not cancelled, not gone),
    and every run must end up final or deleted with no worker left behind."""
    with TestClient(create_app(make_settings(max_jobs=1), recording)) as client:
        rng = random.Random(7)
        picked = set(rng.sample(range(10), 6))
        blocker = _launch(client, "sleep")
        # the jobs acted on run until stopped, so one started behind a removal's back would
        # be left running; the others end at once and pass the slot on
        queued = [_launch(client, "sleep" if i in picked else "ok")["id"] for i in range(10)]
        chosen = [queued[i] for i in sorted(picked)]
        rng.shuffle(chosen)
        env_of(client, blocker["id"])
        # spread over the second in which the freed slot passes from job to job
        actions = [("cancel", blocker["id"], 0.0)] + [
            ("cancel" if i % 2 else "delete", run_id, rng.uniform(0.0, 1.0))
            for i, run_id in enumerate(chosen)
        ]
        barrier = threading.Barrier(len(actions))

        def act(action: tuple[str, int, float]) -> int:
            verb, run_id, delay = action
            barrier.wait()
            time.sleep(delay)
            if verb == "cancel":
                return client.post(f"/api/jobs/{run_id}/cancel").status_code
            return client.delete(f"/api/runs/{run_id}").status_code

        with ThreadPoolExecutor(len(actions)) as pool:
            codes = list(pool.map(act, actions))
        assert codes == [200 if verb == "cancel" else 204 for verb, _, _ in actions], codes
        deleted = {run_id for verb, run_id, _ in actions if verb == "delete"}
        kept = [run_id for run_id in [blocker["id"], *queued] if run_id not in deleted]

        def ended(run_id: int) -> bool:
            run = _run(client, run_id)
            final = run["status"] in ("completed", "cancelled", "failed")
            return final and (run["exit_code"] is not None or not _started(client, run_id))

        wait_until("every job to end", lambda: all(ended(run_id) for run_id in kept), timeout=15)
        for run_id in deleted:
            assert client.get(f"/api/runs/{run_id}").status_code == 404
        for run_id in set(chosen) - deleted:
            run = _run(client, run_id)
            # cancelled while waiting (no worker, no exit status) or while running (SIGTERM)
            expected = 143 if run_id in recording.started else None
            assert (run["status"], run["exit_code"]) == ("cancelled", expected), run
        untouched = set(queued) - set(chosen)
        assert untouched <= set(recording.started)
        assert {_run(client, i)["status"] for i in untouched} == {"completed"}
    for start in recording.starts:
        assert start["row"] == ("queued", True), start  # claimed, neither cancelled nor gone
        assert start["alive"] == 0, start
    assert recording.started == sorted(recording.started)  # FIFO, whatever was removed
    assert all(recording.poll(h) is not None for h in recording.handles)  # no worker left


def test_a_job_that_cannot_start_fails_and_the_next_one_starts(make_settings, recording) -> None:
    with TestClient(create_app(make_settings(max_jobs=1), recording)) as client:
        running = _launch(client, "sleep")
        broken, after = _launch(client, "ok"), _launch(client, "ok")
        recording.fail_for.add(broken["id"])
        client.post(f"/api/jobs/{running['id']}/cancel")
        ended = _final(client, after["id"])
        assert ended["status"] == "completed"
        failed = _run(client, broken["id"])
        assert failed["status"] == "failed"
        assert failed["error"] == "could not start the worker: exec format error (the test's doing)"
    assert recording.started == [running["id"], broken["id"], after["id"]]


def test_a_restarted_api_starts_the_queued_jobs_and_fails_one_caught_mid_start(
    make_settings, recording, stand_in
) -> None:
    class DiesWhileStarting(LocalProcessLauncher):
        """The API process failing after taking a job out of the queue, before its worker."""

        def start(self, spec: LaunchSpec) -> str:
            raise RuntimeError("the API went down here")

    with TestClient(
        create_app(make_settings(max_jobs=1), DiesWhileStarting()), raise_server_exceptions=False
    ) as first:
        assert first.post("/api/jobs", json={**JOB, "name": "ok"}).status_code == 500
        orphan = first.get("/api/runs").json()["items"][0]
        # the orphan holds the only slot: these two wait
        waiting = [_launch(first, "ok"), _launch(first, "sleep")]
        assert [w["queue_position"] for w in waiting] == [1, 2]
        assert orphan["status"] == "queued" and orphan["queue_position"] is None
    with TestClient(create_app(make_settings(max_jobs=1), recording)) as second:
        gone = _run(second, orphan["id"])  # reconciled before serving
        assert gone["status"] == "failed"
        assert gone["error"] == "the API stopped before it could start this job's worker"
        # started once the API knows where it serves (here: at its first request, in-process)
        wait_until("the first queued job to start", lambda: recording.started, timeout=15)
        assert recording.started[0] == waiting[0]["id"]
        assert _final(second, waiting[0]["id"])["status"] == "completed"
        wait_until("the next queued job", lambda: _started(second, waiting[1]["id"]), timeout=15)
        env_of(second, waiting[1]["id"])
        second.post(f"/api/jobs/{waiting[1]['id']}/cancel")
        assert _final(second, waiting[1]["id"])["status"] == "cancelled"
    assert recording.started == [waiting[0]["id"], waiting[1]["id"]]


def test_a_restarted_api_keeps_jobs_queued_behind_a_worker_it_adopts(
    make_settings, recording, stand_in
) -> None:
    with TestClient(create_app(make_settings(max_jobs=1), stand_in)) as first:
        alive = _launch(first, "sleep")
        queued = _launch(first, "ok")
        pid = int(_row(first, alive["id"]).worker_handle.split(":")[1])
        env_of(first, alive["id"])
    with TestClient(create_app(make_settings(max_jobs=1), recording)) as second:
        _settle(second)
        assert _run(second, queued["id"])["queue_position"] == 1  # the adopted one holds the slot
        assert recording.started == []
        os.kill(pid, 9)
        assert _final(second, queued["id"])["status"] == "completed"
        assert _run(second, alive["id"])["status"] == "failed"
    assert recording.started == [queued["id"]]
    stand_in.wait(f"local:{pid}:0", timeout_s=5)  # reap the first API's child


@pytest.fixture
def queue(settings, recording, database_url):
    """The job queue alone, as one of several API processes holds it (no app, no watcher)."""
    db = Database(database_url)
    db.migrate()
    yield JobQueue(db, settings, recording, db.instance_id())
    db.dispose()


def test_a_job_cancelled_or_deleted_between_its_claim_and_its_start_never_starts(
    queue, recording
) -> None:
    """Another API process may cancel or delete a run right after this one took it out of
    the queue, before its worker starts: the start finds that, starts nothing and frees
    the slot."""
    cancelled, deleted, last = (queue.submit({**JOB, "name": "ok"}).id for _ in range(3))
    url = "http://127.0.0.1:9"
    for run_id, act in ((cancelled, queue.cancel), (deleted, queue.delete)):
        run, token = queue._claim_next()
        assert run.id == run_id
        act(run_id)  # as the other process would, in that moment
        queue._start(run, token, url)
    assert recording.started == []
    with queue.db.reader() as session:
        row = session.get(Run, cancelled)
        assert (row.status, row.worker_handle) == ("cancelled", None)
        assert row.worker_exited_at is not None  # it holds no slot
        assert session.get(Run, deleted) is None
    assert queue.start_queued() == [last]  # both slots free: the next job starts
    assert recording.started == [last]


def test_a_cancel_during_a_start_waits_for_the_worker_and_stops_it(
    queue, recording, monkeypatch
) -> None:
    starting, go_on = threading.Event(), threading.Event()
    real_start = recording.start

    def slow_start(spec: LaunchSpec) -> str:
        handle = real_start(spec)
        starting.set()
        go_on.wait(timeout=10)  # the process runs; its handle is not stored yet
        return handle

    monkeypatch.setattr(recording, "start", slow_start)
    run_id = queue.submit({**JOB, "name": "sleep"}).id
    scheduler = threading.Thread(target=queue.start_queued)
    scheduler.start()
    assert starting.wait(timeout=10)
    answered: list[Run] = []
    canceller = threading.Thread(target=lambda: answered.append(queue.cancel(run_id)))
    canceller.start()
    time.sleep(0.5)
    assert answered == []  # waits for the start to finish
    go_on.set()
    scheduler.join(timeout=10)
    canceller.join(timeout=10)
    [run] = answered
    assert run.status == "cancelled" and run.worker_handle == recording.handles[0]
    ended = recording.wait(recording.handles[0], timeout_s=10)
    # stopped by SIGTERM: 143 once the stand-in has installed its handler, -15 before
    assert ended is not None and ended.code in (143, -15)


@pytest.mark.parametrize(
    ("cpus", "max_jobs", "threads"), [(8, 2, 4), (8, 3, 2), (2, 2, 1), (2, 4, 1)]
)
def test_worker_threads_share_the_cpus_among_the_job_slots(
    monkeypatch, tmp_path, cpus, max_jobs, threads
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    settings = Settings(data_dir=tmp_path, max_jobs=max_jobs)
    assert settings.worker_threads == threads
    assert settings.worker_thread_env({}) == {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    assert settings.worker_thread_env({"OMP_NUM_THREADS": "3"}) == {}  # inherited as it is


def test_the_queue_settings_come_from_the_environment(tmp_path) -> None:
    defaults = Settings.from_env({"DORA_DATA_DIR": str(tmp_path)})
    assert (defaults.max_jobs, defaults.max_queued) == (2, 20)
    assert defaults.worker_lease_s == 30.0
    mine = Settings.from_env(
        {"DORA_MAX_JOBS": "3", "DORA_MAX_QUEUED": "5", "DORA_WORKER_LEASE_S": "7.5"}
    )
    assert (mine.max_jobs, mine.max_queued, mine.worker_lease_s) == (3, 5, 7.5)
    with pytest.raises(SettingsError, match="DORA_WORKER_LEASE_S='-1' must be positive"):
        Settings.from_env({"DORA_WORKER_LEASE_S": "-1"})
    with pytest.raises(SettingsError, match="DORA_MAX_QUEUED='0' must be positive"):
        Settings.from_env({"DORA_MAX_QUEUED": "0"})


def test_the_worker_env_carries_the_thread_count(make_settings, stand_in, monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    with TestClient(create_app(make_settings(max_jobs=3), stand_in)) as client:
        env = env_of(client, _launch(client, "ok")["id"])
        assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("2", "2")
        monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the API's own setting wins
        env = env_of(client, _launch(client, "ok")["id"])
        assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("5", None)
