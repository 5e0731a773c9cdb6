"""DDP with torchrun: two CPU processes (gloo) train one job; only rank 0 reports and writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from dora_core.worker.telemetry import read_metrics
from tests.conftest import free_port, start_api, stop_server, wait_until
from tests.worker.conftest import tiny_job
from tests.worker.fake_api import FakeApi

pytestmark = pytest.mark.slow


def test_torchrun_two_processes(tiny_bert, sentiment_csv, tmp_path) -> None:
    # T = 60 steps of 2 x 8 examples; the mask freezes (and compacts, re-wrapping DDP) at 30.
    job = tiny_job(tiny_bert, sentiment_csv, tmp_path / "run", max_steps=60, checkpoint_every=20)
    (tmp_path / "job.json").write_text(json.dumps(job))
    api = FakeApi().start()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DORA_API_URL": api.url}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={free_port()}", "-m", "dora_core.worker.cli", "train",
        str(tmp_path / "job.json"), "--no-progress",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    finally:
        api.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    # Only rank 0 reported: one run, one registration, one contiguous stream.
    assert len(api.runs) == 1
    assert len(api.registrations) == 1
    assert sorted(api.batches) == list(range(len(api.batches)))
    records = read_metrics(run)
    train_steps = [r["step"] for r in records if r["type"] == "scalars" and "loss" in r["values"]]
    assert train_steps == list(range(1, 61))  # each step once, not once per rank
    kinds = [r["kind"] for r in records if r["type"] == "event"]
    assert kinds.count("started") == 1 and kinds.count("finished") == 1
    assert kinds.count("mask_frozen") == 1
    # Only rank 0 checkpointed (keeping the newest two) and wrote the artifacts.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-20", "step-40"]
    split = json.loads((run / "split.json").read_text())
    result = json.loads((run / "result.json").read_text())
    assert result["total_steps"] == 60 and split["train_size"] == 192
    assert sum(result["rank_pattern"].values()) == 2 * 12  # b(T) * L
    # The dev set is evaluated across both ranks and gathered: all 48 examples count once.
    assert result["dev_size"] == 48
    correct = result["metrics"]["accuracy"] * 48
    assert abs(correct - round(correct)) < 1e-9


def test_torchrun_two_processes_generative(tiny_llama, tmp_path) -> None:
    """A causal-lm job under two ranks: the dev loss and the samples are gathered, so the
    result equals a one-process evaluation of the same final weights."""
    import torch

    from dora_core.worker.train.artifacts import trained_model
    from dora_core.worker.train.generation import evaluate_generative
    from dora_core.worker.train.tasks import build_task
    from tests.worker.test_generative import gen_job, pair_rows

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pair_rows(160)))
    job = gen_job(tiny_llama, data, tmp_path / "run", max_steps=20, eval_every=20)
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DORA_API_URL": ""}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={free_port()}", "-m", "dora_core.worker.cli", "train",
        str(tmp_path / "job.json"), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    result = json.loads((run / "result.json").read_text())
    samples = (run / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 12  # each of the first 12 dev examples once, in order
    # One process, the trained weights, the same dev set: the same numbers.
    from dora_core.contracts.job import parse_job_config
    from dora_core.worker.train.plan import prepare

    plan = prepare(parse_job_config(job), run, resume=True)
    model, tokenizer, _ = trained_model(run)
    task = build_task(plan, tokenizer)
    metrics, rows = evaluate_generative(
        model, task.dev, task.dev_examples, tokenizer, batch_size=16,
        device=torch.device("cpu"), causal=True, samples=12, max_new_tokens=3,
    )  # fmt: skip
    assert result["metrics"]["loss"] == pytest.approx(metrics["loss"], rel=1e-4)
    assert [json.loads(s)["prediction"] for s in samples] == [r["prediction"] for r in rows]


def test_a_two_process_gloo_job_through_the_api_reports_once(
    tiny_bert, sentiment_csv, tmp_path
) -> None:
    """`processes: 2` through POST /api/jobs: the API's launcher starts the worker under
    torchrun (no GPU: gloo ranks); the run ends completed with its telemetry stored once."""
    port = free_port()
    env = {
        **os.environ,
        "DORA_DATA_DIR": str(tmp_path / "data"),
        "DORA_MODEL_ROOTS": str(tiny_bert.parent),
        "DORA_DATASET_ROOTS": str(sentiment_csv.parent),
        "DORA_GPUS": "none",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    for name in ("DORA_API_URL", "DATABASE_URL", "DORA_API_TOKEN"):
        env.pop(name, None)
    api = start_api(port, env, tmp_path / "api.log")
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        job = tiny_job(tiny_bert, sentiment_csv, tmp_path / "unused", processes=2, epochs=1)
        for name in ("output_dir", "max_steps"):
            del job[name]
        created = http.post("/api/jobs", json=job)
        assert created.status_code == 201, created.text
        run_id = created.json()["run_id"]

        def ended() -> dict | None:
            run = http.get(f"/api/runs/{run_id}").json()
            return run if run["exit_code"] is not None else None

        run = wait_until("the job to end", ended, timeout=300, every=0.5)
        log = http.get(f"/api/jobs/{run_id}/log", params={"tail": 400}).json()["lines"]
        assert (run["status"], run["exit_code"]) == ("completed", 0), log[-40:]
        # 192 training examples, 8 per rank-batch: one epoch is 12 steps on 2 ranks (24 on 1).
        assert run["total_steps"] == 12
        assert any("training on cpu (2 processes)" in line for line in log), log[-40:]
        loss = http.get(f"/api/runs/{run_id}/scalars", params={"keys": "loss"}).json()
        series = loss["series"]["loss"]
        assert series["steps"] == list(range(1, 13))  # each step stored once
        kinds = [e["kind"] for e in http.get(f"/api/runs/{run_id}/events").json()]
        assert kinds.count("started") == 1 and kinds.count("finished") == 1, kinds
        assert run["num_modules"] == 12  # one registration: 2 layers x 6 projections
    finally:
        stop_server(api)
