"""Generative runs in the API: their task, their best metric, their generated samples.

Every expectation is worked out by hand from the records posted here.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, update

from backend.models import Run
from tests.backend.conftest import new_run
from tests.conftest import RunTokens

pytestmark = pytest.mark.both_databases  # database behaviour: run on PostgreSQL too

HOSTILE = "<img src=x onerror=alert(1)>"


def _generative_run(client, task: str = "causal-lm") -> int:
    RunTokens.of(client)
    config = {"task": task, "model": "smollm2-135m", "dataset": "bbc-summary", "max_steps": 60}
    resp = client.post("/api/runs", json={"name": f"{task} run", "config": config})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _post(client, run_id: int, seq: int, **records) -> None:
    resp = client.post(f"/api/runs/{run_id}/telemetry", json={"seq": seq, **records})
    assert resp.status_code == 200, resp.text


def _evals(client, run_id: int, evals: list[tuple[int, dict[str, float]]]) -> dict:
    for seq, (step, values) in enumerate(evals):
        scalars = {f"eval/{k}": v for k, v in values.items()}
        _post(client, run_id, seq, scalars=[{"step": step, "values": {"loss": 1.0, **scalars}}])
    return client.get(f"/api/runs/{run_id}").json()


def test_a_generative_runs_best_is_rouge_l_once_it_has_one(client) -> None:
    run_id = _generative_run(client)
    run = _evals(
        client,
        run_id,
        [
            (10, {"loss": 2.5, "perplexity": 12.18}),  # no generation yet: the loss stands in
            (20, {"loss": 2.2, "perplexity": 9.03, "rouge1": 0.30, "rouge2": 0.10, "rougeL": 0.25}),
            (30, {"loss": 1.9, "perplexity": 6.69}),  # a lower loss does not beat ROUGE-L
            (40, {"loss": 2.0, "perplexity": 7.39, "rougeL": 0.22}),  # a lower ROUGE-L neither
        ],
    )
    assert run["best"] == {"key": "eval/rougeL", "value": 0.25, "step": 20}
    assert run["metrics"] == {"loss": 2.0, "perplexity": 7.39, "rougeL": 0.22}  # the latest eval
    _post(client, run_id, 4, scalars=[{"step": 50, "values": {"eval/rougeL": 0.31}}])
    assert client.get(f"/api/runs/{run_id}").json()["best"] == {
        "key": "eval/rougeL",
        "value": 0.31,
        "step": 50,
    }


def test_after_the_first_eval_the_loss_is_the_best_until_rouge_arrives(client) -> None:
    run = _evals(client, _generative_run(client), [(10, {"loss": 2.5, "perplexity": 12.18})])
    assert run["best"] == {"key": "eval/loss", "value": 2.5, "step": 10}


def test_a_plain_text_lm_run_keeps_the_lowest_loss(client) -> None:
    run = _evals(
        client,
        _generative_run(client),
        [(10, {"loss": 3.0}), (20, {"loss": 2.5}), (30, {"loss": 2.7}), (40, {"loss": 2.6})],
    )
    assert run["best"] == {"key": "eval/loss", "value": 2.5, "step": 20}


def test_classification_keeps_accuracy_before_rouge_and_macro_f1(client) -> None:
    run_id = new_run(client, register=False)
    run = _evals(
        client,
        run_id,
        [
            (10, {"accuracy": 0.70, "macro_f1": 0.90, "loss": 0.2}),
            (20, {"accuracy": 0.75, "macro_f1": 0.60, "loss": 0.9}),
        ],
    )
    assert run["best"] == {"key": "eval/accuracy", "value": 0.75, "step": 20}


def test_runs_carry_their_task_and_old_configs_read_as_classification(client, database_url) -> None:
    lm, s2s, cls = _generative_run(client), _generative_run(client, "seq2seq"), new_run(client)
    assert client.get(f"/api/runs/{lm}").json()["task"] == "causal-lm"
    listed = {r["id"]: r["task"] for r in client.get("/api/runs").json()["items"]}
    assert listed == {lm: "causal-lm", s2s: "seq2seq", cls: "classification"}
    # a run stored before jobs had a task: its config has no "task" field
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            old = {"model": "minilm", "dataset": "rt-snippets"}
            conn.execute(update(Run).where(Run.id == cls).values(config=old))
    finally:
        engine.dispose()
    run = client.get(f"/api/runs/{cls}").json()
    assert run["config"] == {"model": "minilm", "dataset": "rt-snippets"}
    assert run["task"] == "classification"


def _samples_event(step: int, rows: list, message: str = "generated") -> dict:
    return {"step": step, "kind": "samples", "message": message, "data": {"samples": rows}}


FIRST = [
    {"prompt": "Summarise: the bank raised rates.", "reference": "Rates up.", "prediction": "Up."},
    {"prompt": HOSTILE, "reference": "ünïcödé “quotes”", "prediction": HOSTILE},
]
RESENT = [{"prompt": "p", "reference": "r", "prediction": "resumed"}]


def test_samples_latest_by_step_and_the_steps_that_have_them(client) -> None:
    run_id = _generative_run(client)
    assert client.get(f"/api/runs/{run_id}/samples").json() == {
        "step": None,
        "steps": [],
        "samples": [],
    }
    later = [{"prompt": "q", "reference": "ref", "prediction": "pred"}]
    _post(
        client,
        run_id,
        0,
        events=[
            _samples_event(20, FIRST),
            {"step": 20, "kind": "eval", "message": "loss 2.2", "data": {"loss": 2.2}},
            _samples_event(40, later),
        ],
    )
    # a resumed worker reports step 40 again: its last report is the one shown
    _post(client, run_id, 1, events=[_samples_event(40, RESENT)])
    latest = client.get(f"/api/runs/{run_id}/samples").json()
    assert latest == {"step": 40, "steps": [20, 40], "samples": RESENT}
    at_20 = client.get(f"/api/runs/{run_id}/samples", params={"step": 20}).json()
    assert at_20 == {"step": 20, "steps": [20, 40], "samples": FIRST}  # texts exactly as sent
    missing = client.get(f"/api/runs/{run_id}/samples", params={"step": 30})
    assert missing.status_code == 404
    assert missing.json()["detail"] == (
        f"run {run_id} has no samples at step 30 (steps with samples: 20, 40)"
    )


def test_samples_of_unknown_runs_classification_runs_and_odd_data(client) -> None:
    assert client.get("/api/runs/999/samples").status_code == 404
    cls = new_run(client, register=False)
    assert client.get(f"/api/runs/{cls}/samples").json()["samples"] == []
    assert client.get(f"/api/runs/{cls}/samples", params={"step": 0}).status_code == 404
    run_id = _generative_run(client)
    odd = [
        "not a sample",
        {"prompt": "only a prompt"},
        {"prompt": 7, "reference": None, "prediction": "x"},
    ]
    _post(client, run_id, 0, events=[_samples_event(5, odd), _samples_event(6, [])])
    _post(client, run_id, 1, events=[{"step": 7, "kind": "samples", "message": "no data"}])
    got = client.get(f"/api/runs/{run_id}/samples", params={"step": 5}).json()
    assert got["samples"] == [
        {"prompt": "only a prompt", "reference": "", "prediction": ""},
        {"prompt": "7", "reference": "", "prediction": "x"},
    ]
    assert client.get(f"/api/runs/{run_id}/samples").json() == {
        "step": 7,
        "steps": [5, 6, 7],
        "samples": [],
    }
