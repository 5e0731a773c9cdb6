"""Bad input gets a clear 422 naming the field, and nothing is written.

Complements tests/backend (which covers the common cases): every job-config
field out of its type or range, the boundaries of the cross-field rules,
paths that try to leave the configured roots, request text that must never
become a command line, and telemetry that is malformed in ways a sloppy or
hostile client could send (non-finite numbers, wrong shapes, deep nesting,
text a database cannot store). The expected answers come from the meaning
of each field (docs/protocol.md, `dora train --help`), not from the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.models import Run
from dora_core.contracts.job import JobConfig
from tests.backend.conftest import MODULES, new_run, row_counts, scores_record
from tests.conftest import wait_until

JOB = {"model": "minilm", "dataset": "rt-snippets", "max_steps": 20, "target_rank": 4}
AS_JSON = {"content-type": "application/json"}

# Field -> values that must be refused, each for a reason a user would understand.
BAD_FIELDS: dict[str, list] = {
    "task": ["generation", "CAUSAL-LM", None],
    "name": ["x" * 121, 5],
    "model": ["", 3],
    "dataset": ["", ["rt-snippets"]],
    "text_column": ["", None],
    "label_column": ["", {}],
    "prompt_column": ["", 3],
    "completion_column": ["", None],
    "train_on_prompt": ["maybe", 2],
    "chat_template": [5, ["{{ x }}"]],
    "max_length": [7, 4097, "long"],
    "dev_fraction": [0, 0.5, -0.1],
    "max_train_samples": [0, -1, 1.5],
    "max_dev_samples": [0, "all"],
    "method": ["qlora", "DORA", None],
    "target_rank": [0, 257, 2.5],
    "init_rank": [0, 385, 3],  # 3: below target_rank 4 (equal is b(0) = b(T): no pruning)
    "target_modules": [[], "query", [1]],
    "alpha": [0, -1, float("inf")],
    "dropout": [1, -0.1],
    "beta": [1, -0.1],
    "warmup_frac": [1, -0.1],
    "final_frac": [1, -0.1, 0.85],  # 0.85: with warm-up 0.15 no pruning phase is left
    "prune_interval": [0, 1.5],
    "dem_weight": [-0.1, 10.1],
    "dem_after_freeze": ["maybe", 2],
    "epochs": [0, 1001, float("nan")],
    "max_steps": [0, -5],
    "batch_size": [0, 4097],
    "grad_accum": [0, 1025],
    "lr": [0, 1.5, float("nan")],
    "head_lr": [0, 1.5, float("inf"), "fast"],
    "weight_decay": [-0.01, 1.5],
    "warmup_ratio": [1, -0.1],
    "lr_scheduler": ["step"],
    "grad_clip": [0, -1, float("inf")],
    "seed": [-1, 2**31],
    "eval_every": [0],
    "generate_every": [0, -1],
    "max_gen_samples": [-1, 100_001],
    "max_new_tokens": [0, 4097],
    "checkpoint_every": [0],
    "report_every": [0, None],
    "report_to": ["tensorboard", ["wandb"], [None]],
    "output_dir": ["/tmp/elsewhere", "runs/1"],
    "device": ["tpu", "cuda:0"],
    "precision": ["fp8", "BF16", None],
    "gradient_checkpointing": ["maybe", 2],
    "gpus": [-1, 65, 1.5, "all"],
    "processes": [0, 65, "two"],
}


def test_the_table_covers_every_job_field() -> None:
    """A new field without bad values here fails this test."""
    assert set(BAD_FIELDS) == set(JobConfig.model_fields)


@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for field, values in BAD_FIELDS.items() for value in values],
    ids=lambda v: repr(v)[:24],
)
def test_a_bad_job_field_is_422_naming_it_and_launches_nothing(
    client, settings, database_url, field, value
) -> None:
    body = json.dumps({**JOB, field: value})  # Python's JSON writes NaN and Infinity
    resp = client.post("/api/jobs", content=body, headers=AS_JSON)
    assert resp.status_code == 422, resp.text
    assert [e["loc"][:2] for e in resp.json()["detail"]] == [["body", field]], resp.text
    assert len(resp.content) < 4096  # the message names the value, not a megabyte of it
    assert row_counts(database_url)["runs"] == 0
    assert not settings.runs_dir.exists() or not any(settings.runs_dir.iterdir())


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "lora", "init_rank": 4},  # lora does not prune: r' is not used
        {"method": "full", "target_rank": 4, "init_rank": 2},
        {"init_rank": 5},  # just above target_rank
        {"warmup_frac": 0.25, "final_frac": 0.74},  # a pruning phase of 1% of T
        {"epochs": None},  # max_steps is set
        {"grad_clip": None, "eval_every": None},
    ],
    ids=str,
)
def test_boundaries_of_the_rules_are_accepted(client, fields) -> None:
    # "ok": the stand-in worker exits at once
    resp = client.post("/api/jobs", json={**JOB, "name": "ok", **fields})
    assert resp.status_code == 201, resp.text


def test_the_longest_name_is_accepted(client) -> None:
    resp = client.post("/api/runs", json={"config": {**JOB, "name": "x" * 120}})
    assert resp.status_code == 201 and resp.json()["name"] == "x" * 120


def test_epochs_and_max_steps_cannot_both_be_missing(client, database_url) -> None:
    resp = client.post("/api/jobs", json={**JOB, "max_steps": None, "epochs": None})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "epochs"]
    assert row_counts(database_url)["runs"] == 0


# --- paths ----------------------------------------------------------------------------------


@pytest.fixture
def roots(settings, tmp_path) -> dict[str, Path]:
    """A model folder and a CSV inside the roots, a secret file outside, and symlinks."""
    models, data = settings.model_roots[0], settings.dataset_roots[0]
    (models / "bert").mkdir(parents=True)
    data.mkdir(parents=True)
    (data / "reviews.csv").write_text("text,label\ngood,1\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("text,label\nsecret,1\n")
    (data / "leak.csv").symlink_to(outside / "secret.csv")  # a file link out of the root
    (data / "alias.csv").symlink_to(data / "reviews.csv")  # a link that stays inside
    (data / "sub").mkdir()
    return {"models": models, "data": data, "outside": outside}


def _refused(client, **fields) -> str:
    resp = client.post("/api/jobs", json={**JOB, **fields})
    assert resp.status_code == 422, resp.text
    [error] = resp.json()["detail"]
    assert error["loc"] == ["body", next(iter(fields))]
    return error["msg"]


def test_paths_cannot_leave_the_roots(client, roots, database_url) -> None:
    outside = roots["outside"]
    assert "outside the allowed roots" in _refused(client, dataset="leak.csv")
    assert "outside the allowed roots" in _refused(client, dataset=str(outside / "secret.csv"))
    assert "contains '..'" in _refused(client, dataset="sub/../reviews.csv")
    assert "contains '..'" in _refused(client, dataset=f"{roots['data']}/../outside/secret.csv")
    assert _refused(client, model="~/")  # the home folder is not a root
    assert _refused(client, model="/")
    assert _refused(client, dataset="a" * 5000)  # too long for the OS: still a 422
    assert _refused(client, dataset="x/" * 3000)
    assert "NUL" in _refused(client, dataset="reviews.csv\x00.txt")
    assert row_counts(database_url)["runs"] == 0


def test_a_link_that_stays_inside_reaches_the_worker_as_its_target(client, roots) -> None:
    resp = client.post("/api/jobs", json={**JOB, "name": "ok", "dataset": "alias.csv"})
    assert resp.status_code == 201, resp.text
    job = json.loads((Path(resp.json()["run"]["config"]["output_dir"]) / "job.json").read_text())
    assert job["dataset"] == str((roots["data"] / "reviews.csv").resolve())


@pytest.mark.parametrize(
    "value",
    [
        "dora_core.worker.cli",  # a module path
        "transformers.AutoModel",
        "os.system",
        "$(touch /tmp/dora-pwned)",  # shell strings
        "minilm; rm -rf ~",
        "`id`",
        "| cat /etc/passwd",
        "-m http.server",  # an interpreter flag
    ],
)
def test_a_model_or_dataset_is_a_preset_or_a_path_never_code(client, roots, value) -> None:
    assert "neither a preset nor an existing path" in _refused(client, model=value)
    assert "neither a preset nor an existing path" in _refused(client, dataset=value)


def test_request_text_never_reaches_a_command_line(client, stand_in, roots, tmp_path) -> None:
    """The worker's argv is fixed; names and paths travel inside job.json, as data."""
    name = 'ok"; touch pwned; $(touch pwned) `touch pwned` | tee pwned'
    tricky = roots["data"] / "a;b $(touch pwned) `touch pwned`.csv"
    tricky.write_text("text,label\ngood,1\n")
    resp = client.post("/api/jobs", json={**JOB, "name": name, "dataset": tricky.name})
    assert resp.status_code == 201, resp.text
    run = resp.json()["run"]
    run_dir = Path(run["config"]["output_dir"])
    with client.app.state.db.reader() as session:
        pid = int(session.get(Run, run["id"]).worker_handle.split(":")[1])
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    # The stand-in stands where `<python> -m dora_core.worker.cli` would: prefix, "train", job file.
    assert [a.decode() for a in argv] == [*stand_in.argv_prefix, "train", str(run_dir / "job.json")]
    job = json.loads((run_dir / "job.json").read_text())
    assert (job["name"], job["dataset"]) == (name, str(tricky.resolve()))
    assert client.post(f"/api/jobs/{run['id']}/cancel").status_code == 200  # it idles otherwise
    wait_until(
        "the worker to exit",
        lambda: client.get(f"/api/runs/{run['id']}").json()["exit_code"] is not None,
        timeout=15,
    )
    for folder in (run_dir, roots["data"], tmp_path, Path.cwd()):
        assert not (folder / "pwned").exists(), folder


# --- telemetry --------------------------------------------------------------------------------


def _post(client, run_id: int, body: str):
    return client.post(f"/api/runs/{run_id}/telemetry", content=body, headers=AS_JSON)


def _scores_with(value: str) -> str:
    """One scores record whose second value of enc.0.q is the JSON literal ``value``."""
    record = scores_record(5)
    record["values"]["enc.0.q"][1] = 123.25
    return json.dumps({"seq": 1, "scores": [record]}).replace("123.25", value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e39"])
def test_non_finite_scores_are_rejected_whole(client, database_url, literal) -> None:
    """1e39 is finite as JSON but not as float32, the type scores are stored in."""
    run_id = new_run(client)
    before = row_counts(database_url)
    resp = _post(client, run_id, _scores_with(literal))
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["body", "scores", 0, "values", "enc.0.q"]
    assert row_counts(database_url) == before


def test_non_finite_numbers_elsewhere(client) -> None:
    """Budget b and mask bits are refused; scalars are stored as null (a diverged loss)."""
    run_id = new_run(client)
    budget = '{"seq": 0, "budget": [{"step": 1, "target": 1, "live": 1, "b": 1e400}]}'
    assert _post(client, run_id, budget).json()["detail"][0]["loc"] == ["body", "budget", 0, "b"]
    record = scores_record(1)
    record["masks"]["enc.0.q"][1] = float("nan")
    resp = _post(client, run_id, json.dumps({"seq": 0, "scores": [record]}))
    assert resp.json()["detail"][0]["loc"] == ["body", "scores", 0, "masks", "enc.0.q", 1]
    scalars = '{"seq": 0, "scalars": [{"step": 1, "values": {"loss": 1e400, "lr": -Infinity}}]}'
    assert _post(client, run_id, scalars).status_code == 200
    got = client.get(f"/api/runs/{run_id}/scalars", params={"keys": "loss,lr"}).json()["series"]
    assert got == {
        "loss": {"steps": [1], "values": [None]},
        "lr": {"steps": [1], "values": [None]},
    }


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ("[]", ["body"]),
        ('"batch"', ["body"]),
        ("", ["body"]),
        ('{"seq": 1, "scores": {}}', ["body", "scores"]),
        (
            '{"seq": 1, "scores": [{"step": 7, "values": [], "masks": {}}]}',
            ["body", "scores", 0, "values"],
        ),
        (
            '{"seq": 1, "scores": [{"step": 7, "values": {"enc.0.q": 1}, "masks": {}}]}',
            ["body", "scores", 0, "values", "enc.0.q"],
        ),
        (
            '{"seq": 1, "scores": [{"step": 7, "values": {"enc.0.q": [[1]]}, "masks": {}}]}',
            ["body", "scores", 0, "values", "enc.0.q", 0],
        ),
        ('{"seq": 1, "scores": [{"step": 7, "masks": {}}]}', ["body", "scores", 0, "values"]),
        (
            '{"seq": 1, "budget": [{"step": 2, "target": 1, "live": 1, "b": 1}, {"step": 2, "target": 1, "live": 1, "b": 1}]}',
            ["body", "budget", 1, "step"],
        ),
        (
            '{"seq": 1, "scalars": [{"step": 2, "values": {"loss": 1}}, {"step": 2, "values": {"loss": 2}}]}',
            ["body", "scalars", 1, "step"],
        ),
        (
            '{"seq": 1, "scalars": [{"step": 2, "values": {"": 1}}]}',
            ["body", "scalars", 0, "values"],
        ),
        (
            '{"seq": 1, "scalars": [{"step": 2, "values": {"%s": 1}}]}' % ("k" * 201),
            ["body", "scalars", 0, "values"],
        ),
        (
            '{"seq": 1, "events": [{"step": 2, "kind": "log", "message": "%s"}]}' % ("m" * 100_001),
            ["body", "events", 0, "message"],
        ),
        (
            '{"seq": 1, "events": [{"step": 2147483648, "kind": "log"}]}',
            ["body", "events", 0, "step"],
        ),
        (
            '{"seq": 1, "events": [{"step": 1, "kind": "log", "data": %s}]}'
            % ("[" * 5000 + "]" * 5000),
            ["body"],
        ),
        ('{"seq": 1, "events": [{"step": 1, "kind": "log", "message": "a\\ud800"}]}', ["body"]),
    ],
    ids=lambda v: v[:60] if isinstance(v, str) else None,
)
def test_malformed_batches_are_422_and_write_nothing(client, database_url, body, loc) -> None:
    run_id = new_run(client)
    assert (
        _post(client, run_id, json.dumps({"seq": 0, "scores": [scores_record(1)]})).status_code
        == 200
    )
    before = row_counts(database_url)
    resp = _post(client, run_id, body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == loc, resp.text
    assert row_counts(database_url) == before


def test_the_largest_step_is_taken(client) -> None:
    run_id = new_run(client)
    top = 2**31 - 1
    resp = _post(client, run_id, json.dumps({"seq": 0, "scores": [scores_record(top)]}))
    assert resp.status_code == 200 and resp.json()["step"] == top


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        (
            "/api/runs",
            '{"name": "a\\ud800", "config": {"model": "minilm", "dataset": "rt-snippets"}}',
            ["body", "name"],
        ),
        (
            "/api/jobs",
            '{"name": "a\\udfff", "model": "minilm", "dataset": "rt-snippets", "max_steps": 5}',
            ["body", "name"],
        ),
        ("/api/jobs", '{"\\ud800": 1}', ["body"]),
        ("/api/jobs", "[" * 5000 + "]" * 5000, ["body"]),
        ("/api/runs", '{"config": %s}' % ("[" * 900 + "]" * 900), ["body", "config"]),
        (
            "REGISTER",
            '{"modules": [{"name": "q\\ud800", "layer": 0, "type": "q", "shape": [2, 2], "rank": 2}]}',
            ["body", "modules", 0, "name"],
        ),
        (
            "REGISTER",
            '{"modules": [{"name": "q", "layer": 0, "type": "q", "shape": [-2, 2], "rank": 2}]}',
            ["body", "modules", 0, "shape", 0],
        ),
    ],
    ids=[
        "run name",
        "job name",
        "job key",
        "job nesting",
        "config nesting",
        "module name",
        "shape",
    ],
)
def test_text_no_database_stores_and_deep_nesting_are_422_not_500(
    client, database_url, path, body, loc
) -> None:
    """A lone surrogate ("\\ud800") passes Python's JSON parser but no database takes it."""
    run_id = new_run(client, register=False)
    before = row_counts(database_url)
    path = f"/api/runs/{run_id}/register" if path == "REGISTER" else path
    resp = client.post(path, content=body, headers=AS_JSON)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == loc
    assert row_counts(database_url) == before


def test_a_run_registered_without_modules_keeps_that_layout(client) -> None:
    """A `full` run registers no modules; a different list later is a conflict, not a start."""
    run_id = new_run(client, register=False)
    assert client.post(f"/api/runs/{run_id}/register", json={"modules": []}).status_code == 200
    assert client.post(f"/api/runs/{run_id}/register", json={"modules": []}).status_code == 200
    resp = client.post(f"/api/runs/{run_id}/register", json={"modules": MODULES})
    assert resp.status_code == 409
    assert client.get(f"/api/runs/{run_id}/modules").json() == []
