"""The study's grid: expansion, cell identity, lr selection, the resumable result file."""

from __future__ import annotations

import json
import math

from bench.study_grid import (
    FULL,
    Cell,
    DatasetPlan,
    Grid,
    ResultFile,
    final_cells,
    mean_std,
    search_cells,
    select_lr,
)
from tests.study import two_dataset_grid

TWO = two_dataset_grid(bbc_steps=20, bbc_length=64)


def test_search_is_every_method_and_lr_on_one_seed_and_budget() -> None:
    cells = search_cells(TWO)
    assert len(cells) == 2 * 3 * 2  # datasets x methods x lrs
    assert {(c.seed, c.budget, c.phase) for c in cells} == {(0, 8, "search")}
    assert [c.dataset for c in cells[:6]] == ["sms-spam"] * 6  # dataset by dataset


def test_final_cells_are_seed_major_with_each_methods_lr() -> None:
    lrs = {"dora": 3e-3, "lora": 1e-3, "adalora": 1e-3}
    cells = final_cells(TWO, "bbc-news", lrs)
    assert len(cells) == 2 * 2 * 3  # seeds x budgets x methods
    assert [c.seed for c in cells] == [0] * 6 + [1] * 6
    assert all(c.lr == lrs[c.method] for c in cells)
    assert {(c.budget, c.method) for c in cells[:6]} == {
        (b, m) for b in (2, 8) for m in ("dora", "lora", "adalora")
    }


def test_full_grid_size_matches_the_issue() -> None:
    assert [p.name for p in FULL.datasets] == ["rt-snippets", "sms-spam", "bbc-news", "tweets"]
    assert FULL.methods == ("dora", "lora", "adalora") and FULL.budgets == (2, 8)
    assert len(FULL.seeds) == 3 and FULL.model == "minilm"
    lrs = dict.fromkeys(FULL.methods, 1e-3)
    assert sum(len(final_cells(FULL, p.name, lrs)) for p in FULL.datasets) == 72


def test_job_is_a_valid_worker_config_shared_by_all_methods() -> None:
    from dora_core.contracts.job import parse_job_config

    jobs = [Cell("final", "bbc-news", m, 2, 1, 1e-3).job(TWO) for m in TWO.methods]
    for job in jobs:
        parsed = parse_job_config(job)
        assert parsed.max_steps == 20 and parsed.max_length == 64 and parsed.target_rank == 2
        assert parsed.max_train_samples == 64 and parsed.max_dev_samples == 16
    # Only the method (and the display name) differ between methods of one cell.
    differing = {k for k in jobs[0] if len({json.dumps(j[k]) for j in jobs}) > 1}
    assert differing == {"method", "name"}


def test_key_follows_the_job_not_the_phase() -> None:
    a = Cell("search", "sms-spam", "dora", 8, 0, 1e-3)
    b = Cell("final", "sms-spam", "dora", 8, 0, 1e-3)
    assert a.key(TWO) == b.key(TWO)  # the search cell stands in for this grid cell
    assert a.key(TWO) != Cell("search", "sms-spam", "dora", 8, 0, 3e-3).key(TWO)
    longer = Grid(
        name="t",
        datasets=(DatasetPlan("sms-spam", steps=11, max_length=24, max_train=64, max_dev=16),),
    )
    assert a.key(TWO) != a.key(longer)  # a changed plan reruns


def rec(dataset: str, method: str, lr: float, f1: float, acc: float) -> dict:
    return {"dataset": dataset, "method": method, "lr": lr, "macro_f1": f1, "accuracy": acc}


def test_select_lr_by_macro_f1_then_accuracy_then_smaller_lr() -> None:
    records = [
        rec("d", "dora", 1e-3, 0.70, 0.90),
        rec("d", "dora", 3e-3, 0.80, 0.85),  # best F1
        rec("d", "lora", 1e-3, 0.75, 0.80),
        rec("d", "lora", 3e-3, 0.75, 0.82),  # same F1, better accuracy
        rec("d", "adalora", 3e-3, 0.60, 0.70),
        rec("d", "adalora", 1e-3, 0.60, 0.70),  # a full tie: the smaller lr
    ]
    assert select_lr(records) == {("d", "dora"): 3e-3, ("d", "lora"): 3e-3, ("d", "adalora"): 1e-3}


def test_result_file_ignores_torn_lines_and_keeps_appending(tmp_path) -> None:
    path = tmp_path / "r.jsonl"
    store = ResultFile(path)
    store.append({"key": "a", "v": 1})
    with open(path, "a") as fh:
        fh.write('{"key": "b", "v": ')  # a crash mid-write
    assert set(store.done()) == {"a"}
    store.append({"key": "c", "v": 3})
    assert set(store.done()) == {"a", "c"}
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[1] == '{"key": "b", "v": '  # the torn line stays on its own


def test_mean_std_is_the_sample_std() -> None:
    mean, std = mean_std([0.80, 0.85, 0.90])
    assert math.isclose(mean, 0.85) and math.isclose(std, 0.05)
    assert mean_std([0.5]) == (0.5, 0.0)
