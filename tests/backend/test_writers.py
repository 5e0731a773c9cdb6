"""Who may write into a run: its writer token (always, also without DORA_API_TOKEN) and
the API instance its worker belongs to (docs/protocol.md, "Writers")."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from backend.db import Database, alembic_config
from backend.main import create_app
from tests.backend.conftest import MODULES, env_of, row_counts, scores_record
from tests.backend.test_jobs import _final, _launch

CONFIG = {"model": "minilm", "dataset": "rt-snippets", "max_steps": 100}
BATCH = {"seq": 0, "scores": [scores_record(1)], "events": [{"step": 1, "kind": "prune"}]}


@pytest.fixture
def bare(settings, stand_in) -> Iterator[TestClient]:
    """The app without DORA_API_TOKEN, under a client that sends only what a test gives it."""
    with TestClient(create_app(settings, stand_in)) as client:
        yield client


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _create(client: TestClient, **headers: str) -> dict:
    resp = client.post("/api/runs", json={"name": "by hand", "config": CONFIG}, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_a_run_created_by_hand_gets_its_writer_token_once(bare, database_url) -> None:
    created = _create(bare)
    instance = bare.get("/api/health").json()["instance"]
    assert len(created["token"]) >= 32 and created["instance"] == instance
    assert "token" not in bare.get(f"/api/runs/{created['id']}").json()  # shown once only
    stored = Path(database_url.removeprefix("sqlite:///"))
    if database_url.startswith("sqlite:"):  # only its SHA-256 is kept
        files = b"".join(p.read_bytes() for p in stored.parent.glob("dora.db*"))
        assert created["token"].encode() not in files
        assert hashlib.sha256(created["token"].encode()).hexdigest().encode() in files


def test_without_an_api_token_a_run_still_needs_its_own_token(bare, database_url) -> None:
    """The failure this closes: a worker of another API (another database) reached this
    one and wrote into the run that happened to have its run id."""
    mine, other = _create(bare), _create(bare)
    run_id = mine["id"]
    before = row_counts(database_url)
    for path, body in (
        (f"/api/runs/{run_id}/register", {"modules": MODULES}),
        (f"/api/runs/{run_id}/telemetry", BATCH),
    ):
        missing = bare.post(path, json=body)
        assert missing.status_code == 401, (path, missing.text)
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "run token" in missing.json()["detail"]
        for token in (other["token"], "forged-" + mine["token"][7:]):
            refused = bare.post(path, json=body, headers=_bearer(token))
            assert refused.status_code == 403, (path, refused.text)
            assert f"may not write to run {run_id}" in refused.json()["detail"]
    assert row_counts(database_url) == before  # nothing was written
    assert bare.get(f"/api/runs/{run_id}").json()["status"] == "queued"
    own = _bearer(mine["token"])
    assert (
        bare.post(
            f"/api/runs/{run_id}/register", json={"modules": MODULES}, headers=own
        ).status_code
        == 200
    )
    assert bare.post(f"/api/runs/{run_id}/telemetry", json=BATCH, headers=own).json() == {
        "seq": 0,
        "duplicate": False,
        "step": 1,
    }


def test_with_an_api_token_both_it_and_the_run_token_write(make_settings, stand_in) -> None:
    with TestClient(create_app(make_settings(api_token="master"), stand_in)) as client:
        created = _create(client, Authorization="Bearer master")
        run_id, own = created["id"], _bearer(created["token"])
        unsigned = client.post(f"/api/runs/{run_id}/register", json={"modules": MODULES})
        assert unsigned.status_code == 401
        assert (
            client.post(
                f"/api/runs/{run_id}/register", json={"modules": MODULES}, headers=own
            ).status_code
            == 200
        )
        master = _bearer("master")
        assert (
            client.post(f"/api/runs/{run_id}/telemetry", json=BATCH, headers=master).status_code
            == 200
        )
        # a run token is no API token
        assert client.post("/api/runs", json={"config": CONFIG}, headers=own).status_code == 403
        assert client.post(f"/api/runs/{run_id}/token", headers=own).status_code == 403
        assert client.post(f"/api/runs/{run_id}/token").status_code == 401
        assert client.post(f"/api/runs/{run_id}/token", headers=master).status_code == 200


def test_a_new_token_for_a_resumed_run_only_once_its_launched_worker_ended(bare) -> None:
    live = _launch(bare, "sleep")  # the stand-in waits until it is stopped
    launched_token = env_of(bare, live["id"])["DORA_INGEST_TOKEN"]
    refused = bare.post(f"/api/runs/{live['id']}/token")
    assert refused.status_code == 409 and "has not been seen to end" in refused.json()["detail"]
    assert bare.post(f"/api/jobs/{live['id']}/cancel").status_code == 200
    _final(bare, live["id"])
    issued = bare.post(f"/api/runs/{live['id']}/token").json()
    assert issued["run_id"] == live["id"] and issued["token"] != launched_token
    path = f"/api/runs/{live['id']}/register"
    body = {"modules": MODULES}
    assert bare.post(path, json=body, headers=_bearer(launched_token)).status_code == 403
    assert bare.post(path, json=body, headers=_bearer(issued["token"])).status_code == 200
    hand = _create(bare)  # a run made by hand: its worker is not ours to know about
    again = bare.post(f"/api/runs/{hand['id']}/token").json()["token"]
    note = {"seq": 0, "events": [{"step": 0, "kind": "log", "message": "resumed"}]}
    path = f"/api/runs/{hand['id']}/telemetry"
    assert bare.post(path, json=note, headers=_bearer(again)).status_code == 200
    assert bare.post(path, json=note, headers=_bearer(hand["token"])).status_code == 403


# --- the API instance ---------------------------------------------------------------------


def test_each_database_has_one_instance_id_for_good(make_settings, stand_in, tmp_path) -> None:
    settings = make_settings()
    ids = []
    for _ in range(2):  # the same database, two API processes one after the other
        with TestClient(create_app(settings, stand_in)) as client:
            ids.append(client.get("/api/health").json()["instance"])
    other = make_settings(data_dir=tmp_path / "elsewhere", database_url="")
    with TestClient(create_app(other, stand_in)) as client:
        ids.append(client.get("/api/health").json()["instance"])
    assert ids[0] == ids[1] != ids[2]
    assert all(len(i) == 32 for i in ids)


def test_a_worker_of_another_instance_is_refused_first_and_nothing_is_stored(
    make_settings, stand_in, database_url
) -> None:
    with TestClient(create_app(make_settings(max_body_bytes=4096), stand_in)) as client:
        created = _create(client)
        run_id, ours = created["id"], created["instance"]
        own = _bearer(created["token"])
        register = client.post(
            f"/api/runs/{run_id}/register", json={"modules": MODULES}, headers=own
        )
        assert register.status_code == 200
        before = row_counts(database_url)
        foreign = {"X-Dora-Instance": "0" * 32}
        big = json.dumps({**BATCH, "events": [{"step": 1, "kind": "log", "message": "x" * 5000}]})
        for headers, body in [
            ({**own, **foreign}, json.dumps(BATCH)),  # even with the right token
            (foreign, json.dumps(BATCH)),  # before the token check: not 401
            ({**own, **foreign}, big),  # before the body is read: not 413
        ]:
            resp = client.post(
                f"/api/runs/{run_id}/telemetry",
                content=body,
                headers={**headers, "content-type": "application/json"},
            )
            assert resp.status_code == 409, resp.text
            answer = resp.json()
            assert (answer["code"], answer["instance"], answer["worker_instance"]) == (
                "wrong_instance",
                ours,
                "0" * 32,
            )
            assert ours in answer["detail"] and "0" * 32 in answer["detail"]
        assert row_counts(database_url) == before
        same = {**own, "X-Dora-Instance": ours}
        assert (
            client.post(f"/api/runs/{run_id}/telemetry", json=BATCH, headers=same).status_code
            == 200
        )


def test_a_launched_worker_is_told_its_api_instance(client) -> None:
    run = _launch(client, "ok")
    env = env_of(client, run["id"])
    assert env["DORA_API_INSTANCE"] == client.get("/api/health").json()["instance"]


# --- the job queue tells launched runs from runs made by hand --------------------------------


def test_runs_made_by_hand_take_no_worker_slot_and_survive_a_restart(
    make_settings, stand_in
) -> None:
    """Runs made by hand have writer tokens too; they must not count as launched workers
    (a slot each, for ever) nor be failed at start-up as a launch the API died in."""
    settings = make_settings(max_jobs=1)
    with TestClient(create_app(settings, stand_in)) as client:
        hands = [_create(client)["id"] for _ in range(2)]
        job = _launch(client, "sleep")
        assert job["queue_position"] is None  # the one slot was free: started at once
        assert env_of(client, job["id"])["DORA_RUN_ID"] == str(job["id"])
        client.post(f"/api/jobs/{job['id']}/cancel")
        _final(client, job["id"])
    with TestClient(create_app(settings, stand_in)) as client:  # reconcile at start-up
        for run_id in hands:
            run = client.get(f"/api/runs/{run_id}").json()
            assert (run["status"], run["error"]) == ("queued", None)


def test_migration_0005_marks_the_runs_launched_before_it(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0004")
            for run_id, token in ((1, "ab" * 32), (2, None)):  # launched, waiting in the queue
                conn.execute(
                    text(
                        "INSERT INTO runs (id, name, status, method, model, dataset, config, "
                        "created_at, updated_at, num_modules, queued_at, ingest_token_hash) "
                        "VALUES (:id, 'r', 'queued', 'dora', 'minilm', 'rt-snippets', '{}', "
                        "'2026-01-01 00:00:00', '2026-01-02 00:00:00', 0, "
                        "'2026-01-01 00:00:00', :token)"
                    ),
                    {"id": run_id, "token": token},
                )
    finally:
        engine.dispose()
    db = Database(url)
    try:
        db.migrate()
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, launched_at FROM runs ORDER BY id")).all()
        assert rows[0][1] is not None and rows[1][1] is None
        assert db.instance_id() == db.instance_id()
    finally:
        db.dispose()
