"""`dora sync`: a run trained without an API reaches a real API later, once.

A real uvicorn API (with a token) and real tiny training runs. What the API
serves for the synced run (modules, steps, scores, budget, scalars, events,
status) is compared with the run's own ``metrics.jsonl`` and ``register.json``;
syncing again, or after a sync that broke off right after the API stored a
batch, stores nothing twice; a run that was reported live is recognised.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from dora_core.contracts.rundir import read_metrics
from dora_core.worker.cli import main
from dora_core.worker.telemetry.client import ApiClient, ApiUnavailable
from dora_core.worker.telemetry.sync import SyncError, sync
from tests.conftest import BERT_TYPES, free_port, start_api, stop_server
from tests.worker.conftest import tiny_job

TOKEN = "sync-test-token"
T = 30


@pytest.fixture
def api(tmp_path: Path, monkeypatch):
    """The API as `make run` starts it, with a token; the test's worker knows none of it."""
    port = free_port()
    env = {**os.environ, "DORA_DATA_DIR": str(tmp_path / "data"), "DORA_API_TOKEN": TOKEN}
    env.pop("DORA_API_URL", None)
    env.pop("DATABASE_URL", None)
    proc = start_api(port, env, tmp_path / "api.log")
    for name in (
        "DORA_API_URL",
        "DORA_API_TOKEN",
        "DORA_RUN_ID",
        "DORA_INGEST_TOKEN",
        "DORA_DASH_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def train_tiny(tiny_bert, sentiment_csv, tmp_path: Path, name: str, *extra: str) -> Path:
    run = tmp_path / name
    job = tmp_path / f"{name}.yaml"
    job.write_text(yaml.safe_dump(tiny_job(tiny_bert, sentiment_csv, run, max_steps=T, name=name)))
    assert main(["train", str(job), "--no-progress", *extra]) == 0
    return run


def assert_api_holds(http: httpx.Client, run_id: int, run: Path, name: str) -> None:
    """Everything the API serves for ``run_id`` equals the run directory's records."""
    records = read_metrics(run)
    register = json.loads((run / "register.json").read_text())
    of = {
        k: [r for r in records if r["type"] == k] for k in ("scores", "budget", "scalars", "event")
    }
    summary = http.get(f"/api/runs/{run_id}").json()
    assert summary["status"] == "completed" and summary["name"] == name
    assert summary["total_steps"] == T and summary["num_modules"] == 12
    modules = http.get(f"/api/runs/{run_id}/modules").json()
    assert [m["name"] for m in modules] == [m["name"] for m in register["modules"]]
    assert [m["type"] for m in modules] == BERT_TYPES * 2
    steps = [r["step"] for r in of["scores"]]
    assert http.get(f"/api/runs/{run_id}/steps").json()["steps"] == steps
    for layer in (0, 1):
        got = http.get(
            f"/api/runs/{run_id}/scores", params={"layer": layer, "max_points": 10_000}
        ).json()
        assert got["steps"] == steps
        for series in got["modules"]:
            want = [np.float32(r["values"][series["name"]]).tolist() for r in of["scores"]]
            assert series["scores"] == want
            assert series["masks"] == [r["masks"][series["name"]] for r in of["scores"]]
    budget = http.get(f"/api/runs/{run_id}/budget").json()
    assert budget["steps"] == [r["step"] for r in of["budget"]]
    assert budget["live"] == [r["live"] for r in of["budget"]]
    expected: dict[str, dict[str, list]] = {}
    for record in of["scalars"]:
        for key, value in record["values"].items():
            expected.setdefault(key, {"steps": [], "values": []})
            expected[key]["steps"].append(record["step"])
            expected[key]["values"].append(value)
    got = http.get(
        f"/api/runs/{run_id}/scalars", params={"keys": ",".join(expected), "max_points": 10_000}
    ).json()["series"]
    assert got == expected
    events = http.get(f"/api/runs/{run_id}/events").json()
    assert [(e["step"], e["kind"], e["message"]) for e in events] == [
        (r["step"], r["kind"], r["message"]) for r in of["event"]
    ]


@pytest.mark.slow
def test_an_offline_run_synced_twice_is_stored_once(
    api, tiny_bert, sentiment_csv, tmp_path, capsys, monkeypatch
) -> None:
    http = httpx.Client(base_url=api, timeout=30)
    run = train_tiny(tiny_bert, sentiment_csv, tmp_path, "offline")
    assert json.loads((run / "telemetry-state.json").read_text())["run_id"] is None
    assert len(json.loads((run / "register.json").read_text())["modules"]) == 12
    capsys.readouterr()

    # Without the token the API refuses to create the run: one line, nothing stored.
    assert main(["sync", str(run), "--api", api]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "401" in err[0] and err[0].startswith("dora sync: error:")
    assert http.get("/api/runs").json()["total"] == 0

    assert main(["sync", str(run), "--api", api, "--token", TOKEN]) == 0
    out = capsys.readouterr().out
    assert f"synced {run} to {api} as run 1" in out
    assert_api_holds(http, 1, run, "offline")
    assert (os.stat(run / "sync.json").st_mode & 0o777) == 0o600  # it holds the run's token

    monkeypatch.setenv("DORA_API_TOKEN", TOKEN)
    assert main(["sync", str(run), "--api", api]) == 0
    assert capsys.readouterr().out.strip() == (
        f"{run} is already synced to this API as run 1 (http://127.0.0.1:8050/runs/1)"
    )
    assert http.get("/api/runs").json()["total"] == 1
    assert_api_holds(http, 1, run, "offline")  # nothing twice

    # A copy of the run, whose sync breaks off right after the API stored its third batch:
    # the next sync sends that batch again under the same seq, and the API keeps it once.
    copy = tmp_path / "offline-copy"
    shutil.copytree(run, copy)
    (copy / "sync.json").unlink()
    real = ApiClient.post_telemetry
    calls = []

    def lost_answer(self, run_id, body):
        answer = real(self, run_id, body)
        calls.append(body["seq"])
        if len(calls) == 3:
            raise ApiUnavailable("connection reset")
        return answer

    monkeypatch.setattr(ApiClient, "post_telemetry", lost_answer)
    with pytest.raises(SyncError, match="did not answer") as info:
        sync(copy, api, TOKEN, batch_records=20, retries=1)
    assert "`dora sync` again goes on from there" in str(info.value)
    monkeypatch.setattr(ApiClient, "post_telemetry", real)
    done = sync(copy, api, TOKEN, batch_records=20)
    assert done.run_id == 2 and done.finished and not done.created
    assert done.sent == len(read_metrics(copy)) - 2 * 20  # from the batch in flight on
    assert_api_holds(http, 2, copy, "offline")


@pytest.mark.slow
def test_a_run_reported_live_is_recognised(
    api, tiny_bert, sentiment_csv, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("DORA_API_TOKEN", TOKEN)
    run = train_tiny(tiny_bert, sentiment_csv, tmp_path, "live", "--api", api)
    capsys.readouterr()
    assert main(["sync", str(run), "--api", api]) == 0
    assert capsys.readouterr().out.strip() == (
        f"{run} was reported live to this API as run 1 (http://127.0.0.1:8050/runs/1): "
        "nothing to sync"
    )
    http = httpx.Client(base_url=api, timeout=30)
    assert http.get("/api/runs").json()["total"] == 1
    assert not (run / "sync.json").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "is not a directory"),
        (lambda d: d, "is not a run directory (no job.json or metrics.jsonl)"),
    ],
    ids=["missing", "not-a-run"],
)
def test_a_bad_run_directory_is_one_line(tmp_path, capsys, make, message) -> None:
    # The port is closed: the run directory is checked before the API is asked.
    code = main(["sync", str(make(tmp_path)), "--api", f"http://127.0.0.1:{free_port()}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_an_api_that_does_not_answer_is_one_line(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.json").write_text(json.dumps({"model": "m", "dataset": "d.csv"}))
    (run / "metrics.jsonl").write_text("")
    (run / "register.json").write_text(json.dumps({"modules": []}))
    api = f"http://127.0.0.1:{free_port()}"
    assert main(["sync", str(run), "--api", api]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot reach the API at {api}" in err[0]
