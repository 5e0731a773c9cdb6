"""Jobs through the launcher: validation, the worker's environment and log, exits, cancel,
start-up reconciliation. The worker is a stand-in script written by conftest (the launcher's
argv prefix is the only thing swapped), so process handling is real and fast."""

from __future__ import annotations

import io
import json
import os
import signal
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.db import Database
from backend.launcher import LocalProcessLauncher
from backend.main import create_app
from backend.models import Run
from tests.backend.conftest import env_of, row_counts
from tests.conftest import wait_until

JOB = {"model": "minilm", "dataset": "rt-snippets", "max_steps": 20, "target_rank": 4}


def _launch(client, name: str, **fields) -> dict:
    resp = client.post("/api/jobs", json={**JOB, "name": name, **fields})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["run"]["id"] == body["run_id"]
    return body["run"]


def _final(client, run_id: int) -> dict:
    return wait_until(
        f"run {run_id} to end",
        lambda: (
            (r := client.get(f"/api/runs/{run_id}").json())["status"]
            in ("completed", "failed", "cancelled")
            and r["exit_code"] is not None
            and r
        ),
        timeout=15,
    )


@pytest.mark.parametrize(
    ("fields", "loc", "message"),
    [
        ({"target_rank": 0}, ["body", "target_rank"], "greater than or equal to 1"),
        ({"init_rank": 3}, ["body", "init_rank"], "at least target_rank"),
        ({"warmup_frac": 0.6, "final_frac": 0.5}, ["body", "final_frac"], "no pruning phase"),
        ({"command": "rm -rf /"}, ["body", "command"], "unknown field"),
        ({"method": "qlora"}, ["body", "method"], ""),
        ({"output_dir": "/tmp/elsewhere"}, ["body", "output_dir"], "server chooses"),
    ],
)
def test_bad_job_config_is_422_naming_the_field(client, database_url, fields, loc, message) -> None:
    resp = client.post("/api/jobs", json={**JOB, **fields})
    assert resp.status_code == 422
    [err] = resp.json()["detail"]
    assert err["loc"] == loc and message in err["msg"]
    assert row_counts(database_url)["runs"] == 0


@pytest.mark.parametrize(
    ("config", "missing"),
    [
        ({}, ["model", "dataset"]),
        ({"model": "minilm", "max_steps": 5}, ["dataset"]),
        ({"dataset": "rt-snippets"}, ["model"]),
    ],
)
def test_a_job_without_model_or_dataset_is_422_naming_it(
    client, settings, database_url, config, missing
) -> None:
    """`{}` used to launch a 3-epoch MiniLM job on rt-snippets (the schema's defaults)."""
    launched = client.post("/api/jobs", json=config)
    created = client.post("/api/runs", json={"config": config})
    for resp, prefix in ((launched, ["body"]), (created, ["body", "config"])):
        assert resp.status_code == 422, resp.text
        detail = resp.json()["detail"]
        assert [err["loc"] for err in detail] == [[*prefix, field] for field in missing]
        assert all(err["msg"].startswith("required: ") for err in detail)
    assert row_counts(database_url)["runs"] == 0
    assert not settings.runs_dir.exists() or not any(settings.runs_dir.iterdir())


def test_job_body_must_be_a_json_object(client) -> None:
    not_json = client.post(
        "/api/jobs", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["detail"][0]["msg"]
    a_list = client.post("/api/jobs", json=[1, 2])
    assert a_list.status_code == 422 and "mapping" in a_list.json()["detail"][0]["msg"]


def test_paths_must_stay_inside_the_configured_roots(client, settings, tmp_path) -> None:
    models = settings.model_roots[0]
    (models / "tiny-bert").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (models / "escape").symlink_to(outside)
    data = settings.dataset_roots[0]
    data.mkdir(parents=True)
    (data / "mine.csv").write_text("text,label\nhi,1\n")

    def error(**fields) -> tuple[list, str]:
        resp = client.post("/api/jobs", json={**JOB, **fields})
        assert resp.status_code == 422, resp.text
        return resp.json()["detail"][0]["loc"], resp.json()["detail"][0]["msg"]

    loc, msg = error(model="../outside")
    assert loc == ["body", "model"] and "contains '..'" in msg
    assert "contains '..'" in error(model=f"{models}/../../outside")[1]
    assert "outside the allowed roots" in error(model=str(outside))[1]
    assert "outside the allowed roots" in error(model="escape")[1]  # symlink out of the root
    assert "neither a preset nor an existing path" in error(model="no-such-model")[1]
    assert error(dataset="/etc/passwd")[0] == ["body", "dataset"]

    ok = _launch(client, "ok", model="tiny-bert", dataset="mine.csv")
    job = json.loads((Path(ok["config"]["output_dir"]) / "job.json").read_text())
    assert job["model"] == str((models / "tiny-bert").resolve())
    assert job["dataset"] == str((data / "mine.csv").resolve())
    assert ok["model"] == job["model"] and ok["name"] == "ok"


def test_an_hf_dataset_spec_names_the_cache_not_a_path(client) -> None:
    """hf:NAME[:CONFIG] is no path, so it is not confined to the dataset roots; its form is
    checked by the shared schema (a '..' or a third part is 422 before anything is created)."""
    run = _launch(client, "hf", dataset="hf:stanfordnlp/imdb:plain_text")
    job = json.loads((Path(run["config"]["output_dir"]) / "job.json").read_text())
    assert job["dataset"] == "hf:stanfordnlp/imdb:plain_text"
    for bad in ("hf:../data", "hf:a/b/c"):
        resp = client.post("/api/jobs", json={**JOB, "dataset": bad})
        assert resp.status_code == 422, resp.text
        [err] = resp.json()["detail"]
        assert err["loc"] == ["body", "dataset"] and "hf:NAME" in err["msg"]


def test_worker_gets_its_run_env_and_log_and_nothing_secret(client, settings, monkeypatch) -> None:
    monkeypatch.setenv("DORA_API_TOKEN", "master-secret")
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:pw@db/dora")
    run = _launch(client, "ok")
    run_dir = settings.runs_dir / str(run["id"])
    assert run["config"]["output_dir"] == str(run_dir)
    assert run["status"] in ("queued", "completed")
    job = json.loads((run_dir / "job.json").read_text())
    assert job["output_dir"] == str(run_dir) and job["name"] == "ok" and job["max_steps"] == 20
    env = env_of(client, run["id"])
    # served in-process (TestClient): no socket, so DORA_API_HOST:DORA_API_PORT (test_address.py)
    assert env["DORA_API_URL"] == settings.configured_url == "http://127.0.0.1:8000"
    assert env["DORA_RUN_ID"] == str(run["id"])
    assert env["DORA_DATA_DIR"] == str(settings.data_dir)
    assert env["DORA_API_TOKEN"] is None and env["DATABASE_URL"] is None
    assert len(env["DORA_INGEST_TOKEN"]) >= 32
    first = client.get(f"/api/jobs/{run['id']}/log").json()["lines"][0]
    assert first == f"stand-in train {run_dir / 'job.json'} cwd={run_dir}"
    ended = _final(client, run["id"])
    assert (ended["status"], ended["exit_code"]) == ("completed", 0)


def test_ingest_token_opens_only_its_own_run(make_settings, stand_in) -> None:
    settings = make_settings(api_token="master")
    with TestClient(create_app(settings, stand_in)) as client:
        master = {"Authorization": "Bearer master"}
        run = client.post("/api/jobs", json={**JOB, "name": "sleep"}, headers=master).json()["run"]
        other = client.post("/api/jobs", json={**JOB, "name": "sleep"}, headers=master).json()[
            "run"
        ]
        token = env_of(client, run["id"])["DORA_INGEST_TOKEN"]
        mine = {"Authorization": f"Bearer {token}"}
        modules = [{"name": "m", "layer": 0, "type": "q", "shape": [2, 2], "rank": 2}]
        assert (
            client.post(
                f"/api/runs/{run['id']}/register", json={"modules": modules}, headers=mine
            ).status_code
            == 200
        )
        assert (
            client.post(
                f"/api/runs/{run['id']}/telemetry", json={"seq": 0}, headers=mine
            ).status_code
            == 200
        )
        assert (
            client.post(
                f"/api/runs/{other['id']}/telemetry", json={"seq": 0}, headers=mine
            ).status_code
            == 403
        )
        # the run token is not an API token
        assert client.post(f"/api/jobs/{run['id']}/cancel", headers=mine).status_code == 403
        for run_id in (run["id"], other["id"]):
            assert client.post(f"/api/jobs/{run_id}/cancel", headers=master).status_code == 200


def test_worker_that_dies_marks_the_run_failed_with_status_and_log(client) -> None:
    run = _launch(client, "exit-3")
    ended = _final(client, run["id"])
    assert (ended["status"], ended["exit_code"]) == ("failed", 3)
    assert ended["error"] == "the worker exited with status 3: RuntimeError: boom at step 7"
    [event] = client.get(f"/api/runs/{run['id']}/events", params={"kind": "failed"}).json()
    assert event["data"]["exit_code"] == 3
    assert event["data"]["log_tail"][-2:] == [
        "Traceback (most recent call last):",
        "RuntimeError: boom at step 7",
    ]


def test_worker_killed_by_a_signal(client) -> None:
    run = _launch(client, "sleep")
    pid = _pid_of(client, run["id"])
    os.kill(pid, signal.SIGKILL)
    ended = _final(client, run["id"])
    assert (ended["status"], ended["exit_code"]) == ("failed", -9)
    assert ended["error"].startswith("the worker was killed by SIGKILL")


def _pid_of(client, run_id: int) -> int:
    env_of(client, run_id)  # the worker is up
    return int(_handle(client, run_id).split(":")[1])


def test_cancel_sends_sigterm_and_the_worker_exits(client) -> None:
    run = _launch(client, "sleep")
    env_of(client, run["id"])
    resp = client.post(f"/api/jobs/{run['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    ended = _final(client, run["id"])
    assert (ended["status"], ended["exit_code"]) == ("cancelled", 143)
    assert "got SIGTERM, checkpointing" in client.get(f"/api/jobs/{run['id']}/log").json()["lines"]
    again = client.post(f"/api/jobs/{run['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def test_cancel_kills_a_worker_that_ignores_sigterm(make_settings, stand_in) -> None:
    with TestClient(create_app(make_settings(cancel_grace_s=0.5), stand_in)) as client:
        run = _launch(client, "stubborn")
        env_of(client, run["id"])
        assert client.post(f"/api/jobs/{run['id']}/cancel").status_code == 200
        ended = _final(client, run["id"])
        assert (ended["status"], ended["exit_code"]) == ("cancelled", -9)
        assert "ignoring SIGTERM" in client.get(f"/api/jobs/{run['id']}/log").json()["lines"]


def test_cancel_of_a_run_not_launched_here_is_409(client) -> None:
    run_id = client.post(
        "/api/runs", json={"config": {"model": "minilm", "dataset": "rt-snippets"}}
    ).json()["id"]
    resp = client.post(f"/api/jobs/{run_id}/cancel")
    assert resp.status_code == 409 and "not launched by this API" in resp.json()["detail"]
    assert client.get(f"/api/jobs/{run_id}/log").status_code == 404


def test_delete_of_a_live_job_stops_the_worker_and_removes_its_dir(client, settings) -> None:
    run = _launch(client, "sleep")
    pid = _pid_of(client, run["id"])
    run_dir = settings.runs_dir / str(run["id"])
    assert run_dir.is_dir()
    assert client.delete(f"/api/runs/{run['id']}").status_code == 204
    assert not run_dir.exists()
    assert client.get(f"/api/runs/{run['id']}").status_code == 404
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_log_tail_returns_the_last_lines(client, settings) -> None:
    run = _launch(client, "ok")
    _final(client, run["id"])
    log = settings.runs_dir / str(run["id"]) / "worker.log"
    with log.open("a") as f:
        f.writelines(f"line {i}\n" for i in range(5000))
    assert client.get(f"/api/jobs/{run['id']}/log", params={"tail": 3}).json() == {
        "lines": ["line 4997", "line 4998", "line 4999"]
    }
    assert len(client.get(f"/api/jobs/{run['id']}/log").json()["lines"]) == 200


def test_restarted_api_adopts_live_workers_and_fails_dead_ones(
    make_settings, stand_in, tmp_path
) -> None:
    settings = make_settings(watch_interval_s=3600)  # the first API never notices anything
    with TestClient(create_app(settings, stand_in)) as first:
        alive = _launch(first, "sleep")
        dead = _launch(first, "exit-3")
        pid_alive = _pid_of(first, alive["id"])
        stand_in.wait(_handle(first, dead["id"]), timeout_s=10)
    # A new API process: its launcher never started these workers.
    fresh = LocalProcessLauncher(argv_prefix=stand_in.argv_prefix)
    with TestClient(create_app(make_settings(), fresh)) as second:
        gone = second.get(f"/api/runs/{dead['id']}").json()  # reconciled before serving
        assert gone["status"] == "failed" and gone["exit_code"] is None
        assert "exit status unknown" in gone["error"] and "boom at step 7" in gone["error"]
        assert second.get(f"/api/runs/{alive['id']}").json()["status"] == "queued"  # adopted
        os.kill(pid_alive, signal.SIGKILL)
        ended = wait_until(
            "the adopted worker's death",
            lambda: (
                (r := second.get(f"/api/runs/{alive['id']}").json())["status"] == "failed" and r
            ),
            timeout=15,
        )
        assert "exit status unknown" in ended["error"]
    stand_in.wait(_handle_from(settings, alive["id"]), timeout_s=5)  # reap our own child


def _handle(client, run_id: int) -> str:
    with client.app.state.db.reader() as session:
        return session.get(Run, run_id).worker_handle


def _handle_from(settings, run_id: int) -> str:
    db = Database(settings.database_url)
    try:
        with db.reader() as session:
            return session.get(Run, run_id).worker_handle
    finally:
        db.dispose()


def test_adapter_zip_has_the_adapter_files_and_nothing_outside(client, settings, tmp_path) -> None:
    run = _launch(client, "ok")
    assert client.get(f"/api/runs/{run['id']}/adapter.zip").status_code == 404
    adapter = settings.runs_dir / str(run["id"]) / "adapter"
    adapter.mkdir()
    files = {"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": os.urandom(4096)}
    for name, data in files.items():
        (adapter / name).write_bytes(data)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not ship")
    (adapter / "link.txt").symlink_to(secret)
    assert client.get(f"/api/runs/{run['id']}").json()["has_adapter"] is True
    resp = client.get(f"/api/runs/{run['id']}/adapter.zip")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(resp.content)) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == files


def test_a_worker_that_cannot_start_fails_its_run_and_frees_its_slot(
    make_settings, tmp_path
) -> None:
    broken = LocalProcessLauncher(argv_prefix=(str(tmp_path / "no-such-python"),))
    with TestClient(create_app(make_settings(max_jobs=1), broken)) as client:
        for _ in range(2):
            run = _launch(client, "ok")
            assert run["status"] == "failed"
            assert run["error"].startswith("could not start the worker: ")


def test_a_worker_stopped_by_a_signal_after_its_checkpoint_is_cancelled(client) -> None:
    """Exit 143 without the ``cancelled`` event reaching us (SIGTERM from elsewhere)."""
    run = _launch(client, "interrupted")
    ended = _final(client, run["id"])
    assert (ended["status"], ended["exit_code"], ended["error"]) == ("cancelled", 143, None)
    again = client.post(f"/api/jobs/{run['id']}/cancel")
    assert again.status_code == 409


def test_cancel_is_409_once_our_worker_has_ended_even_if_the_run_was_resumed(client) -> None:
    run = _launch(client, "exit-3")
    _final(client, run["id"])
    modules = [{"name": "m", "layer": 0, "type": "q", "shape": [2, 2], "rank": 2}]
    # `dora train --resume` by hand: its worker has ended, so the run gets a new writer token
    token = client.post(f"/api/runs/{run['id']}/token").json()["token"]
    resumed = client.post(
        f"/api/runs/{run['id']}/register",
        json={"modules": modules},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert resumed["status"] == "running"
    resp = client.post(f"/api/jobs/{run['id']}/cancel")
    assert resp.status_code == 409 and "has ended" in resp.json()["detail"]
