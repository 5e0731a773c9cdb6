"""The comparison study as data: which cells exist, what job each runs, what is finished.

Pure code (stdlib only): the grid is a product of datasets x methods x
budgets x seeds, preceded by a learning-rate search on one seed. Every cell
is a plain worker job config (``dora_core.contracts.job``), so the study runs
exactly what ``dora train`` runs. A cell is identified by a hash of its job
config, so a finished cell is skipped on a rerun while a changed plan (other
steps, caps, ...) reruns. Results live in JSONL files, one line per finished
cell, appended only after the cell finished: a crash can at worst leave a
half-written last line, which is ignored (and the cell reruns).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METHODS = ("dora", "lora", "adalora")

# The dev metrics a study record carries, by the job's task (result.json's ``metrics``, whose
# ``loss`` every task has and the record keeps as ``dev_loss``), and the one the progress
# line shows. Generative perplexity is exp(dev loss): lower is better.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "causal-lm": ("rouge1", "rouge2", "rougeL", "perplexity"),
    "seq2seq": ("rouge1", "rouge2", "rougeL", "perplexity"),
}
HEADLINE = {"classification": "accuracy", "causal-lm": "rougeL", "seq2seq": "rougeL"}


def task_of(record: dict[str, Any]) -> str:
    """A record's (or a job's) task; the first studies' records predate the field."""
    return str(record.get("task", "classification"))


@dataclass(frozen=True)
class DatasetPlan:
    """How one dataset is run; the same for every method, budget and seed."""

    name: str
    steps: int  # optimizer steps T
    max_length: int  # tokens per example (bbc-news articles are long: the title and lead)
    max_train: int  # cap on training examples (tweets has 38k)
    max_dev: int  # cap on dev examples


@dataclass(frozen=True)
class Grid:
    """A whole study: the lr search on one seed, then every cell at the chosen lr."""

    name: str  # "full" / "quick": names the result files
    datasets: tuple[DatasetPlan, ...]
    methods: tuple[str, ...] = METHODS
    budgets: tuple[int, ...] = (2, 8)  # b(T)
    seeds: tuple[int, ...] = (0, 1, 2)
    lrs: tuple[float, ...] = (1e-3, 3e-3)  # the search space, the same for every method
    search_budget: int = 8  # the lr is tuned at this b(T) ...
    search_seed: int = 0  # ... on this seed's dev split, then fixed
    model: str = "minilm"
    # Fields shared by every job: the paper's schedule and the worker's defaults, spelled out
    # so a change of default in the worker cannot silently change the study.
    common: dict[str, Any] = field(
        default_factory=lambda: {
            "batch_size": 16,
            "lr_scheduler": "linear",
            "warmup_ratio": 0.06,
            "weight_decay": 0.01,
            "grad_clip": 1.0,
            "alpha": 8.0,
            "dropout": 0.1,
            "warmup_frac": 0.15,
            "final_frac": 0.5,
            "prune_interval": 10,
            "dem_weight": 0.1,
            "dev_fraction": 0.1,
            "device": "cpu",
        }
    )

    def plan(self, dataset: str) -> DatasetPlan:
        return next(p for p in self.datasets if p.name == dataset)

    @property
    def task(self) -> str:
        """What every cell trains (the worker's ``task`` field; classification by default)."""
        return task_of(self.common)


@dataclass(frozen=True)
class Cell:
    """One training run of the study."""

    phase: str  # "search" or "final"
    dataset: str
    method: str
    budget: int
    seed: int
    lr: float
    # Job fields set on top of the grid's plan (round 2's ablations: dem_weight, init_rank,
    # head_lr, max_steps + eval_every). Empty for the first study, so its keys are unchanged.
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        extra = "".join(f"/{k}={v:g}" for k, v in self.overrides)
        return f"{self.dataset}/{self.method}/b{self.budget}/s{self.seed}/lr{self.lr:g}{extra}"

    def steps(self, grid: Grid) -> int:
        """Optimizer steps T of this cell."""
        return int(dict(self.overrides).get("max_steps", grid.plan(self.dataset).steps))

    @property
    def init_rank(self) -> int:
        """r' as the worker resolves it (``dora_core.contracts.wire.start_rank``)."""
        from dora_core.contracts.wire import start_rank

        return int(start_rank(self.method, self.budget, dict(self.overrides).get("init_rank")))

    def job(self, grid: Grid) -> dict[str, Any]:
        """The worker job config of this cell (without output_dir)."""
        plan = grid.plan(self.dataset)
        return {
            **grid.common,
            "name": f"study-{grid.name} {self.method} {self.dataset} b{self.budget} s{self.seed} lr{self.lr:g}",
            "model": grid.model,
            "dataset": self.dataset,
            "method": self.method,
            "target_rank": self.budget,
            "seed": self.seed,
            "lr": self.lr,
            "max_steps": plan.steps,
            "max_length": plan.max_length,
            "max_train_samples": plan.max_train,
            "max_dev_samples": plan.max_dev,
            "eval_every": plan.steps,  # one dev evaluation, at the end: the number we report
            **dict(self.overrides),
        }

    def key(self, grid: Grid) -> str:
        """Stable id of what the cell computes: a hash of its job minus the display name."""
        job = {k: v for k, v in self.job(grid).items() if k != "name"}
        digest = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()
        return digest[:16]

    def slug(self, grid: Grid) -> str:
        """Run directory name: readable, and unique through the key."""
        extra = "".join(f"-{k}{v:g}" for k, v in self.overrides)
        return f"{self.dataset}-{self.method}-b{self.budget}-s{self.seed}-lr{self.lr:g}{extra}-{self.key(grid)[:8]}"

    def cost(self, grid: Grid) -> float:
        """Rough relative cost for the progress bar's ETA: steps x sequence length, plus a
        fixed start-up (process, model, tokenisation) worth 30 steps of 64 tokens."""
        return self.steps(grid) * grid.plan(self.dataset).max_length / 64 + 30


def search_cells(grid: Grid) -> list[Cell]:
    """The lr search: every method x lr on one seed at one budget, dataset by dataset."""
    return [
        Cell("search", plan.name, method, grid.search_budget, grid.search_seed, lr)
        for plan in grid.datasets
        for method in grid.methods
        for lr in grid.lrs
    ]


def final_cells(grid: Grid, dataset: str, best_lr: dict[str, float]) -> list[Cell]:
    """One dataset's grid at the chosen lr per method; seed-major, so a partial study has
    comparable cells (every method and budget of seed 0 before seed 1)."""
    return [
        Cell("final", dataset, method, budget, seed, best_lr[method])
        for seed in grid.seeds
        for budget in grid.budgets
        for method in grid.methods
    ]


def score(record: dict[str, Any]) -> tuple[float, float]:
    """What the lr search maximises. Classification: dev macro-F1 (robust to the majority
    class on sms-spam's 13% spam), then accuracy. Generative: ROUGE-L (the worker's best
    metric for a generating run), then the lower dev loss."""
    if task_of(record) == "classification":
        return (record["macro_f1"], record["accuracy"])
    return (record["rougeL"], -record["dev_loss"])


def select_lr(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """Best lr per (dataset, method) among search records; ties go to the smaller lr."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        k = (rec["dataset"], rec["method"])
        cur = best.get(k)
        if cur is None or (score(rec), -rec["lr"]) > (score(cur), -cur["lr"]):
            best[k] = rec
    return {k: rec["lr"] for k, rec in best.items()}


# --- result files ------------------------------------------------------------------------


class ResultFile:
    """An append-only JSONL file of finished cells, keyed by ``record["key"]``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        """Every complete, valid line; a torn or foreign line is skipped (its cell reruns)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("key"), str):
                out.append(rec)
        return out

    def done(self) -> dict[str, dict[str, Any]]:
        """key -> record (the last one wins if a key was written twice)."""
        return {rec["key"]: rec for rec in self.records()}

    def append(self, record: dict[str, Any]) -> None:
        """Write one line and fsync it. A torn last line from a crash is closed off first, so
        it stays a line of its own (ignored) instead of swallowing this one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path, "a+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write(line.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())


class Progress:
    """What a study planner tracks: finished cells (from its result files), running, failed.

    ``files`` has ``search`` and ``cells`` ResultFiles (``bench.study.Files``). Subclasses
    decide the order (``next_cell``), the cost left and which records to reuse."""

    def __init__(self, grid: Grid, files: Any):
        self.grid, self.files = grid, files
        self.search_done = files.search.done()
        self.cells_done = files.cells.done()
        self.running: set[str] = set()
        self.failed: set[str] = set()

    def _open(self, cell: Cell) -> bool:
        key = cell.key(self.grid)
        done = self.search_done if cell.phase == "search" else self.cells_done
        return key not in done and key not in self.running and key not in self.failed

    def reuse_search(self) -> int:
        """Copy records of cells already trained elsewhere; returns how many."""
        return 0

    def finish(self, cell: Cell, record: dict[str, Any]) -> None:
        key = cell.key(self.grid)
        (self.files.search if cell.phase == "search" else self.files.cells).append(record)
        (self.search_done if cell.phase == "search" else self.cells_done)[key] = record
        self.running.discard(key)
        if cell.phase == "search":
            self.reuse_search()


# --- summaries (used by the report) -------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); std is 0 for a single value."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def group(
    records: Iterable[dict[str, Any]], *keys: str
) -> Iterator[tuple[tuple[Any, ...], list[dict[str, Any]]]]:
    """Records grouped by the given fields, groups in first-seen order."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(tuple(rec[k] for k in keys), []).append(rec)
    yield from groups.items()


# --- the two grids --------------------------------------------------------------------------

# Sized from measured cells: one optimizer step at 16 x 48 tokens costs about 0.35 s of one
# core (0.45 s wall with two cells at once on an idle 2-core machine, 1.3 s or more while
# other work shares it), 128 tokens about 2.7x; the time per cell is in docs/results.md.
# Steps stay under one epoch of the train cap, so no example is seen twice.
FULL = Grid(
    name="full",
    datasets=(
        DatasetPlan("rt-snippets", steps=300, max_length=48, max_train=4800, max_dev=1000),
        DatasetPlan("sms-spam", steps=200, max_length=48, max_train=4000, max_dev=484),
        DatasetPlan("bbc-news", steps=150, max_length=128, max_train=2000, max_dev=223),
        DatasetPlan("tweets", steps=300, max_length=48, max_train=4800, max_dev=1000),
    ),
    lrs=(3e-4, 1e-3, 3e-3, 1e-2),
)

QUICK = Grid(
    name="quick",
    datasets=(DatasetPlan("sms-spam", steps=100, max_length=48, max_train=1600, max_dev=300),),
    seeds=(0,),
    lrs=(1e-3, 3e-3),
)

GRIDS = {"full": FULL, "quick": QUICK}
