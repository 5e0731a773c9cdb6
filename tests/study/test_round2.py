"""Study round 2's plan: which cells each question runs, and what round 1 already answered."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.study import Files
from bench.study_grid import FULL, Cell, ResultFile, final_cells, search_cells
from bench.study_round2 import ROUND2, Round2Study, lr_b2_search, question_cells
from tests.study import fake_record

LR8 = {
    (d, m): lr
    for d in ("rt-snippets", "tweets")
    for m, lr in (("dora", 1e-2), ("lora", 3e-3), ("adalora", 1e-3))
}


@pytest.fixture
def round1(tmp_path):
    """Round 1's files: a complete search (the lr above wins) and its final cells."""
    first = Files(FULL, tmp_path, tmp_path / "runs")
    for cell in search_cells(FULL):
        won = LR8.get((cell.dataset, cell.method)) == cell.lr
        first.search.append(fake_record(cell, FULL, 0.9 if won else 0.5))
    for dataset in ("rt-snippets", "tweets"):
        lrs = {m: LR8[(dataset, m)] for m in ("dora", "lora", "adalora")}
        for cell in final_cells(FULL, dataset, lrs):
            first.cells.append(fake_record(cell, FULL, 0.8))
    return first


def test_dem_cells_vary_eta_and_the_default_is_round_ones_cell() -> None:
    cells = question_cells("dem", LR8, {})
    assert len(cells) == 3 * 2 * 2 * 3  # seeds x datasets x budgets x eta
    assert Counter(dict(c.overrides).get("dem_weight", 0.1) for c in cells) == {
        0.0: 12,
        0.1: 12,
        0.5: 12,
    }
    assert {c.method for c in cells} == {"dora"} and {c.lr for c in cells} == {1e-2}
    default = next(c for c in cells if not c.overrides)
    twin = Cell("final", default.dataset, "dora", default.budget, default.seed, default.lr)
    assert default.key(ROUND2) == twin.key(FULL)  # same job: round 1's record answers it


def test_init_rank_cells_are_b_1_5b_and_2b() -> None:
    cells = question_cells("init_rank", LR8, {})
    ranks = Counter((c.budget, c.init_rank) for c in cells)
    assert ranks == {(2, 2): 6, (2, 3): 6, (2, 4): 6, (8, 8): 6, (8, 12): 6, (8, 16): 6}
    job = next(c for c in cells if c.init_rank == 16).job(ROUND2)
    assert job["init_rank"] == 16 and job["target_rank"] == 8


def test_longer_cells_train_three_epochs_and_evaluate_each() -> None:
    cells = question_cells("longer", LR8, {})
    assert len(cells) == 3 * 2 * 3
    for cell in cells:
        job = cell.job(ROUND2)
        per_epoch = job["max_train_samples"] // job["batch_size"]
        assert job["max_steps"] == 3 * per_epoch and job["eval_every"] == per_epoch
        assert cell.lr == LR8[(cell.dataset, cell.method)] and cell.budget == 8
    assert cells[0].cost(ROUND2) > 2.5 * search_cells(FULL)[0].cost(FULL)


def test_head_lr_cells_pair_each_method_with_and_without_a_slower_head() -> None:
    cells = question_cells("head_lr", LR8, {})
    assert {c.dataset for c in cells} == {"rt-snippets"} and {c.lr for c in cells} == {1e-2}
    pairs = Counter((c.method, dict(c.overrides).get("head_lr")) for c in cells)
    assert pairs == {(m, h): 3 for m in ("dora", "lora", "adalora") for h in (None, 1e-3)}


def test_the_study_reuses_round_one_and_waits_for_its_own_search(round1, tmp_path) -> None:
    files = Files(ROUND2, tmp_path, tmp_path / "runs")
    study = Round2Study(files, round1.search, round1.cells)
    assert {k: v for k, v in study.lr8.items() if k in LR8} == LR8
    copied = study.reuse_search()
    # b(T)=2 search cells at round 1's lr on seed 0 are round 1's finals: 2 datasets x 3.
    assert len(files.search.done()) == 6
    # Final cells with round 1's job: dem eta 0.1 (12) = init_rank 1.5 b(T) = head_lr's DoRA
    # cells without override (same keys), plus head_lr's seed-0 LoRA and AdaLoRA cells at
    # lr 1e-2, which round 1's search ran (2).
    assert len(files.cells.done()) == copied - 6 == 12 + 2
    assert all(r["reused_from"] == "full" for r in files.cells.records())
    assert study.lr2() == {}  # search not complete yet: lr_b2 has no final cells
    assert not question_cells("lr_b2", LR8, study.lr2())
    # Finishing the search unlocks lr_b2's cells at the searched lr.
    for cell in lr_b2_search():
        if cell.key(ROUND2) not in study.search_done:
            study.finish(cell, fake_record(cell, ROUND2, 0.95 if cell.lr == 3e-4 else 0.4))
    assert set(study.lr2().values()) == {3e-4}
    lr_b2 = question_cells("lr_b2", LR8, study.lr2())
    assert len(lr_b2) == 3 * 2 * 3 and {c.lr for c in lr_b2} == {3e-4}
    assert all(c.key(ROUND2) in {p.key(ROUND2) for p in study.planned()} for c in lr_b2)


def test_round_two_refuses_to_start_without_round_ones_search(tmp_path) -> None:
    files = Files(ROUND2, tmp_path, tmp_path / "runs")
    empty = ResultFile(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match=r"run bench/study\.py"):
        Round2Study(files, empty, empty)
