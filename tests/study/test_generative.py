"""The generative grid: its cells and jobs, its sizing, how the runner plans and records it.

Scheduling and records are checked with stand-ins for the one thing that trains
(``CellRunner.run``) or for a finished run directory written here by hand; the
slow test trains two tiny real SmolLM2 cells through the real worker and
reports them with the real report section.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bench import study
from bench.study_generative import GENERATIVE, cell_seconds, grid_hours
from bench.study_grid import Cell, ResultFile, final_cells, search_cells, select_lr
from dora_core.contracts.presets import DATASETS, MODELS

LR = {"dora": 1e-3, "lora": 1e-3, "adalora": 1e-3}


def test_six_cells_of_smollm2_on_bbc_summary() -> None:
    search = search_cells(GENERATIVE)
    finals = final_cells(GENERATIVE, "bbc-summary", LR)
    assert len(finals) == 6 and len(search) == 3
    assert [(c.method, c.budget, c.seed) for c in finals] == [
        (m, 8, s) for s in (0, 1) for m in ("dora", "lora", "adalora")
    ]
    # The one-point lr "search" is the seed-0 cells: 6 trainings in all, not 9.
    assert {c.key(GENERATIVE) for c in search} == {c.key(GENERATIVE) for c in finals if c.seed == 0}
    assert len({c.key(GENERATIVE) for c in finals}) == 6


def test_keys_are_stable() -> None:
    # A rebuilt grid gives the same keys; the display name is not part of them; a changed
    # plan changes them (its cells rerun).
    rebuilt = dataclasses.replace(GENERATIVE, common=dict(GENERATIVE.common))
    cell = Cell("final", "bbc-summary", "dora", 8, 1, 1e-3)
    assert cell.key(rebuilt) == cell.key(GENERATIVE)
    assert cell.key(dataclasses.replace(GENERATIVE, name="renamed")) == cell.key(GENERATIVE)
    fewer_tokens = dataclasses.replace(
        GENERATIVE, common={**GENERATIVE.common, "max_new_tokens": 32}
    )
    assert cell.key(fewer_tokens) != cell.key(GENERATIVE)
    # Recorded when the grid was defined: a change here orphans every recorded result, so
    # it must be deliberate (update the literal and say so in the commit).
    assert cell.key(GENERATIVE) == "4eb36d89d43105ff"


def test_every_job_is_a_valid_causal_lm_worker_config() -> None:
    from dora_core.contracts.job import parse_job_config

    assert "causal-lm" in DATASETS["bbc-summary"].tasks
    assert "causal-lm" in MODELS["smollm2-135m"].tasks
    for cell in final_cells(GENERATIVE, "bbc-summary", LR):
        job = parse_job_config(cell.job(GENERATIVE))
        assert (job.task, job.model, job.dataset, job.method) == (
            "causal-lm",
            "smollm2-135m",
            "bbc-summary",
            cell.method,
        )
        assert (job.batch_size, job.max_length, job.max_steps, job.eval_every) == (4, 256, 120, 120)
        assert (job.max_train_samples, job.max_dev_samples) == (480, 128)
        assert (job.max_gen_samples, job.max_new_tokens, job.generate_every) == (64, 48, None)
        assert (job.target_rank, job.lr, job.device) == (8, 1e-3, "cpu")


def test_sizing_fits_two_hours() -> None:
    # 1.3 x (25 s start + 11.3 s x 120 steps + 1.1 s x 128 dev examples + 1.9 s x 64 samples)
    assert math.isclose(cell_seconds(), 1.3 * (25 + 1356 + 140.8 + 121.6))
    assert math.isclose(grid_hours(), 3 * 2136.42 / 3600)  # 3 waves of 2 cells
    assert grid_hours() <= 2.0
    # A two-point lr search would add 3 cells: 5 waves, no longer about 2 hours.
    assert grid_hours(dataclasses.replace(GENERATIVE, lrs=(1e-3, 3e-3))) > 2.9


def rec(method: str, lr: float, rouge_l: float, loss: float) -> dict[str, Any]:
    return {
        "task": "causal-lm",
        "dataset": "bbc-summary",
        "method": method,
        "lr": lr,
        "rougeL": rouge_l,
        "dev_loss": loss,
    }


def test_select_lr_of_generative_records_by_rouge_l_then_lower_loss() -> None:
    records = [
        rec("dora", 1e-3, 0.20, 2.0),
        rec("dora", 3e-3, 0.25, 2.5),  # best ROUGE-L despite a higher loss
        rec("lora", 1e-3, 0.22, 2.4),
        rec("lora", 3e-3, 0.22, 2.1),  # same ROUGE-L, lower loss
        rec("adalora", 3e-3, 0.10, 3.0),
        rec("adalora", 1e-3, 0.10, 3.0),  # a full tie: the smaller lr
    ]
    assert select_lr(records) == {
        ("bbc-summary", "dora"): 3e-3,
        ("bbc-summary", "lora"): 3e-3,
        ("bbc-summary", "adalora"): 1e-3,
    }


# --- planning, with a stand-in runner ---------------------------------------------------------


class FakeRunner:
    """Returns a generative record for each cell asked for, and remembers the order."""

    calls: ClassVar[list[Cell]] = []

    def __init__(self, grid, files, layout, api=None, threads=1):
        self.grid = grid

    def run(self, cell: Cell) -> dict[str, Any]:
        FakeRunner.calls.append(cell)
        return {
            **rec(cell.method, cell.lr, 0.2 + 0.01 * cell.seed, 2.0),
            "key": cell.key(self.grid),
            "phase": cell.phase,
            "budget": cell.budget,
            "seed": cell.seed,
        }

    def stop(self) -> None:
        pass


def test_the_grid_runs_as_three_full_waves(monkeypatch, tmp_path) -> None:
    files = study.Files(GENERATIVE, tmp_path / "results", tmp_path / "runs")
    plan = study.Study(GENERATIVE, files)
    # Two cells at once: while the first two seed-0 cells run, the third starts, and seed 1
    # does not wait for it (a one-point lr space is known from the start).
    started = []
    for _ in range(4):
        cell = plan.next_cell()
        plan.running.add(cell.key(GENERATIVE))
        started.append((cell.phase, cell.method, cell.seed))
    assert started == [
        ("search", "dora", 0),
        ("search", "lora", 0),
        ("search", "adalora", 0),
        ("final", "dora", 1),
    ]
    assert plan.remaining_cost()[0] == 2  # lora and adalora of seed 1; nothing counted twice

    FakeRunner.calls = []
    monkeypatch.setattr(study, "CellRunner", FakeRunner)
    monkeypatch.setattr(study, "module_layout", lambda model, task: {})
    summary = study.run_study(GENERATIVE, files, jobs=2, progress=False)
    assert summary["cells_run"] == len(FakeRunner.calls) == 6 and summary["complete"]
    records = ResultFile(files.cells.path).records()
    assert len(records) == 6 and sum(bool(r.get("from_search")) for r in records) == 3
    assert files.cells.path.name == "generative-cells.jsonl"


def test_generative_flag_is_its_own_grid(capsys) -> None:
    assert study.main(["--generative", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "study: error: --quick, --round2 and --generative are separate grids: give one"


# --- the record of a finished run ---------------------------------------------------------------

# Two adapted projections (d_out, d_in); a live component costs d_in + d_out + 1.
LAYOUT = {
    "model.layers.0.self_attn.q_proj": {
        "layer": 0,
        "type": "self_attn.q_proj",
        "shape": [576, 576],
    },
    "model.layers.0.mlp.down_proj": {"layer": 0, "type": "mlp.down_proj", "shape": [576, 1536]},
}


def finished_run(run_dir: Path, evals: list[dict[str, Any]]) -> None:
    run_dir.mkdir(parents=True)
    lines = [{"type": "scalars", "step": 3, "values": {"loss": 2.5, "lr": 1e-3}}]
    lines += [
        {"type": "scalars", "step": e.pop("step"), "values": {f"eval/{k}": v for k, v in e.items()}}
        for e in evals
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def result(metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "total_steps": 120,
        "metrics": metrics,
        "params": {"adapter": 5000, "head": 0, "total": 135_000_000},
        "train_size": 480,
        "dev_size": 128,
        "wall_time_s": 1500.0,
        "rank_pattern": {"model.layers.0.self_attn.q_proj": 5, "model.layers.0.mlp.down_proj": 11},
    }


def test_a_generative_record_carries_rouge_perplexity_and_dev_loss(tmp_path) -> None:
    files = study.Files(GENERATIVE, tmp_path / "results", tmp_path / "runs")
    runner = study.CellRunner(GENERATIVE, files, LAYOUT)
    run_dir = tmp_path / "runs" / "cell"
    finished_run(
        run_dir,
        [
            {"step": 60, "loss": 2.6, "perplexity": 13.46},  # no generation at this evaluation
            {
                "step": 120,
                "loss": 2.4,
                "perplexity": 11.02,
                "rouge1": 0.3,
                "rouge2": 0.1,
                "rougeL": 0.25,
            },
        ],
    )
    metrics = {"loss": 2.4, "perplexity": 11.02, "rouge1": 0.3, "rouge2": 0.1, "rougeL": 0.25}
    cell = Cell("final", "bbc-summary", "dora", 8, 1, 1e-3)
    record = runner.record(cell, result(metrics), run_dir, wall=1600.0)
    assert record["task"] == "causal-lm"
    assert (record["rouge1"], record["rouge2"], record["rougeL"]) == (0.3, 0.1, 0.25)
    assert (record["perplexity"], record["dev_loss"]) == (11.02, 2.4)
    assert "accuracy" not in record and "macro_f1" not in record
    assert record["evals"] == [
        {"step": 60, "perplexity": 13.46},
        {"step": 120, "rouge1": 0.3, "rouge2": 0.1, "rougeL": 0.25, "perplexity": 11.02},
    ]
    # 5 x (576 + 576 + 1) + 11 x (1536 + 576 + 1)
    assert record["live_adapter_params"] == 5 * 1153 + 11 * 2113
    assert sorted((r["type"], r["live"]) for r in record["rank_pattern"]) == [
        ("mlp.down_proj", 11),
        ("self_attn.q_proj", 5),
    ]
    assert (record["steps"], record["max_length"], record["train_s"], record["wall_s"]) == (
        120,
        256,
        1500.0,
        1600.0,
    )
    assert record["key"] == cell.key(GENERATIVE)


def test_a_classification_record_keeps_accuracy_and_macro_f1(tmp_path) -> None:
    from tests.study import two_dataset_grid

    grid = two_dataset_grid(bbc_steps=10, bbc_length=24)
    files = study.Files(grid, tmp_path / "results", tmp_path / "runs")
    runner = study.CellRunner(grid, files, LAYOUT)
    run_dir = tmp_path / "runs" / "cell"
    finished_run(run_dir, [{"step": 10, "loss": 0.4, "accuracy": 0.9, "macro_f1": 0.8}])
    cell = Cell("final", "sms-spam", "lora", 2, 0, 1e-3)
    record = runner.record(
        cell, result({"loss": 0.4, "accuracy": 0.9, "macro_f1": 0.8}), run_dir, wall=20.0
    )
    assert (record["task"], record["accuracy"], record["macro_f1"], record["dev_loss"]) == (
        "classification",
        0.9,
        0.8,
        0.4,
    )
    assert "rougeL" not in record and "perplexity" not in record
    assert record["evals"] == [{"step": 10, "accuracy": 0.9, "macro_f1": 0.8}]
    assert record["live_adapter_params"] == 5000 and record["rank_pattern"] is None  # LoRA


# --- one tiny real cell ----------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_real_generative_cells_end_to_end(tmp_path) -> None:
    """DoRA and AdaLoRA on SmolLM2 through the real worker, 4 steps each, then the report."""
    from bench.report import generative

    for preset in (MODELS["smollm2-135m"], DATASETS["bbc-summary"]):
        if not preset.available:
            pytest.skip(f"{preset.name} is not installed ({preset.install_hint})")
    plan = dataclasses.replace(
        GENERATIVE.datasets[0], steps=4, max_length=128, max_train=16, max_dev=4
    )
    grid = dataclasses.replace(
        GENERATIVE,
        name="tinygen",
        datasets=(plan,),
        methods=("dora", "adalora"),
        seeds=(0,),
        common={**GENERATIVE.common, "max_gen_samples": 2, "max_new_tokens": 8},
    )
    files = study.Files(grid, tmp_path / "results", tmp_path / "runs")
    summary = study.run_study(grid, files, jobs=1, threads=1, progress=False)
    assert summary["cells_run"] == 2 and summary["complete"], summary["failures"]
    records = {r["method"]: r for r in ResultFile(files.cells.path).records()}
    for method, r in records.items():
        assert r["task"] == "causal-lm" and r["from_search"]
        assert (r["steps"], r["train_size"], r["dev_size"]) == (4, 16, 4)
        assert all(0 <= r[m] <= 1 for m in ("rouge1", "rouge2", "rougeL"))
        assert math.isclose(r["perplexity"], math.exp(r["dev_loss"]), rel_tol=1e-6)
        # SmolLM2: 30 layers x 7 projections, b(T) = 8 live components each on average
        assert len(r["rank_pattern"]) == 210, method
        assert sum(row["live"] for row in r["rank_pattern"]) == 8 * 210, method
        assert r["evals"][-1]["step"] == 4 and "rougeL" in r["evals"][-1]
        run_dir = Path(r["run_dir"])
        samples = (run_dir / "samples.jsonl").read_text().splitlines()
        assert len(samples) == 2
    assert records["dora"]["adapter_params"] == records["dora"]["live_adapter_params"]
    text = "\n".join(generative.section(tmp_path / "results", grid))
    assert "Status: complete, 2 of 2 cells finished." in text
    dora = records["dora"]
    row = next(line for line in text.splitlines() if line.startswith("| 8 | DoRA"))
    assert f"{dora['rougeL'] * 100:.2f} (n=1)" in row and f"{dora['perplexity']:.2f} (n=1)" in row
