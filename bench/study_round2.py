"""Study round 2 as data: the paper's ablations, a longer regime, lr at b(T) = 2, stability.

Pure code (stdlib only), like ``study_grid``. Every question is a list of
cells on two of the first study's datasets (rt-snippets, tweets) with the
same caps, lengths and schedule, so a cell that the first study already ran
has the same key and its record is reused instead of trained again:

- ``dem``: DoRA with eta (dem_weight) in {0, 0.1, 0.5} (paper Table 5);
- ``init_rank``: DoRA with b(0) in {b(T), 1.5 b(T), 2 b(T)} (paper Table 6);
- ``head_lr``: every method at the edge lr 1e-2 on rt-snippets, the classifier
  head at the same lr or at 1e-3 (does a slower head stop runs that never learn?);
- ``lr_b2``: the lr searched at b(T) = 2 on its own, then 3 seeds at that lr;
- ``longer``: 3 epochs of the train cap at b(T) = 8, a dev evaluation each epoch.

Learning rates: ``dem``, ``init_rank`` and ``longer`` use each method's lr
chosen by the first study's search (b(T) = 8); ``lr_b2`` its own search.
"""

from __future__ import annotations

import math
from typing import Any

from bench.study_grid import (
    FULL,
    METHODS,
    Cell,
    Grid,
    Progress,
    ResultFile,
    search_cells,
    select_lr,
)

DATASETS = ("rt-snippets", "tweets")
BUDGETS = (2, 8)
SEEDS = (0, 1, 2)
DEM_WEIGHTS = (0.0, 0.1, 0.5)  # 0.1 is the default: those cells are the first study's
INIT_FACTORS = (1.0, 1.5, 2.0)  # b(0) / b(T); 1.5 is the default
EDGE_LR = 1e-2  # the lr at which the first study had runs that never learned
HEAD_LR = 1e-3
EPOCHS = 3
# The order questions run in: the cheap ablations first, the 3-epoch cells last.
QUESTIONS = ("dem", "init_rank", "head_lr", "lr_b2", "longer")

ROUND2 = Grid(
    name="round2",
    datasets=tuple(FULL.plan(name) for name in DATASETS),
    budgets=(2,),
    seeds=SEEDS,
    lrs=FULL.lrs,
    search_budget=2,  # the b(T) = 2 search of question lr_b2
)


def lr_b2_search() -> list[Cell]:
    """Question lr_b2's search: every method x lr on seed 0 at b(T) = 2."""
    return search_cells(ROUND2)


def _override(name: str, value: Any, default: Any) -> tuple[tuple[str, Any], ...]:
    """One job override, or none when the value is the default (so keys match round 1)."""
    return () if value == default else ((name, value),)


def question_cells(
    question: str, lr8: dict[tuple[str, str], float], lr2: dict[tuple[str, str], float]
) -> list[Cell]:
    """The final cells of one question, seed-major. ``lr8``: the first study's choice per
    (dataset, method); ``lr2``: round 2's b(T) = 2 choice (datasets missing: not known yet)."""
    cells: list[Cell] = []
    for seed in SEEDS:
        for dataset in DATASETS:
            if question == "dem":
                lr = lr8[(dataset, "dora")]
                cells += [
                    Cell("final", dataset, "dora", b, seed, lr, _override("dem_weight", eta, 0.1))
                    for b in BUDGETS
                    for eta in DEM_WEIGHTS
                ]
            elif question == "init_rank":
                lr = lr8[(dataset, "dora")]
                for b in BUDGETS:
                    default = math.ceil(1.5 * b)
                    for factor in INIT_FACTORS:
                        r0 = math.ceil(factor * b)
                        extra = _override("init_rank", r0, default)
                        cells.append(Cell("final", dataset, "dora", b, seed, lr, extra))
            elif question == "head_lr" and dataset == "rt-snippets":
                cells += [
                    Cell("final", dataset, m, 8, seed, EDGE_LR, extra)
                    for m in METHODS
                    for extra in ((), (("head_lr", HEAD_LR),))
                ]
            elif question == "lr_b2":
                cells += [
                    Cell("final", dataset, m, 2, seed, lr2[(dataset, m)])
                    for m in METHODS
                    if (dataset, m) in lr2
                ]
            elif question == "longer":
                steps = FULL.plan(dataset).steps
                extra = (("eval_every", steps), ("max_steps", EPOCHS * steps))
                cells += [
                    Cell("final", dataset, m, 8, seed, lr8[(dataset, m)], extra) for m in METHODS
                ]
    return cells


def epochs_per_cap(dataset: str) -> float:
    """How many passes over the train cap the first study's steps are (1.0 for both sets)."""
    plan = FULL.plan(dataset)
    return plan.steps * FULL.common["batch_size"] / plan.max_train


class Round2Study(Progress):
    """Which round-2 cells still have to run, given round 2's and round 1's result files.

    Same interface as ``bench.study.Study`` (next_cell, remaining_cost, finish, running,
    failed, reuse_search) so ``run_study`` drives either."""

    def __init__(self, files: Any, round1_search: ResultFile, round1_cells: ResultFile):
        super().__init__(ROUND2, files)
        self.lr8 = select_lr(round1_search.records())
        missing = [(d, m) for d in DATASETS for m in METHODS if (d, m) not in self.lr8]
        if missing:
            raise ValueError(
                f"round 2 needs the first study's lr search; missing {missing}: "
                "run bench/study.py (the full grid) first"
            )
        # Round 1's records by key: a round-2 cell with the same job is copied, not rerun.
        self.round1 = {**round1_search.done(), **round1_cells.done()}

    def lr2(self) -> dict[tuple[str, str], float]:
        """Round 2's b(T) = 2 lr per (dataset, method), for datasets whose search is complete."""
        out = {}
        for dataset in DATASETS:
            cells = [c for c in lr_b2_search() if c.dataset == dataset]
            keys = [c.key(self.grid) for c in cells]
            if all(k in self.search_done for k in keys):
                out.update(select_lr(self.search_done[k] for k in keys))
        return out

    def planned(self) -> list[Cell]:
        """Every final cell known now, in run order, without repeats (one cell can answer
        several questions: eta 0.1 at b(0) = 1.5 b(T) is also round 1's cell)."""
        seen: set[str] = set()
        out = []
        lr2 = self.lr2()
        for question in QUESTIONS:
            for cell in question_cells(question, self.lr8, lr2):
                key = cell.key(self.grid)
                if key not in seen:
                    seen.add(key)
                    out.append(cell)
        return out

    def reuse_search(self) -> int:
        """Copy the record of every cell (search or planned final) that round 1 or round 2's
        search already trained (same key = same job). Returns how many were copied."""
        copied = 0
        for cell in lr_b2_search():
            key = cell.key(self.grid)
            if key in self.round1 and key not in self.search_done:
                record = {**self.round1[key], "phase": "search", "grid": self.grid.name}
                record["reused_from"] = self.round1[key]["grid"]
                self.files.search.append(record)
                self.search_done[key] = record
                copied += 1
        for cell in self.planned():
            key = cell.key(self.grid)
            if key in self.cells_done:
                continue
            source = self.round1.get(key) or self.search_done.get(key)
            if source is not None:
                record = {
                    **source,
                    "phase": "final",
                    "grid": self.grid.name,
                    "reused_from": source["grid"],
                }
                record["overrides"] = dict(cell.overrides)
                self.files.cells.append(record)
                self.cells_done[key] = record
                copied += 1
        return copied

    def _todo(self) -> list[Cell]:
        search = [c for c in lr_b2_search() if self._open(c)]
        finals = [c for c in self.planned() if self._open(c)]
        # Search cells run when question lr_b2 comes up in QUESTIONS' order: after head_lr.
        head = [c for c in finals if dict(c.overrides).get("max_steps") is None]
        longer = [c for c in finals if dict(c.overrides).get("max_steps") is not None]
        return head + search + longer

    def next_cell(self) -> Cell | None:
        todo = self._todo()
        return todo[0] if todo else None

    def remaining_cost(self) -> tuple[int, float]:
        """(cells, cost units) still to train; lr_b2's final cells count before their lr is
        known with a stand-in lr (the cost does not depend on it)."""
        todo = self._todo()
        unknown = [d for d in DATASETS if (d, "dora") not in self.lr2()]
        stand_in = {(d, m): FULL.lrs[0] for d in unknown for m in METHODS}
        todo += [c for c in question_cells("lr_b2", {}, stand_in) if c.seed != 0]
        return len(todo), sum(c.cost(self.grid) for c in todo)
