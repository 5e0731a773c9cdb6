"""What every section of the report shares: where the repository is, the names it prints,
the number formats, and one grid's results as the sections read them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.study_grid import Grid, ResultFile

ROOT = Path(__file__).resolve().parent.parent.parent

METHOD_NAMES = {"dora": "DoRA (ours)", "lora": "LoRA (PEFT)", "adalora": "AdaLoRA (PEFT)"}
TYPE_SHORT = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn.out",
    "intermediate.dense": "ffn.in",
    "output.dense": "ffn.out",
}


# --- formats ---------------------------------------------------------------------------------


def fmt(mean: float, std: float, n: int, scale: float = 100.0) -> str:
    """ "mean ± std" in percent; a single seed shows no std."""
    if n == 0:
        return "–"
    if n == 1:
        return f"{mean * scale:.2f} (n=1)"
    return f"{mean * scale:.2f} ± {std * scale:.2f}" + ("" if n >= 3 else f" (n={n})")


def span(values: Sequence[int]) -> str:
    """Sorted integers as "a" when all equal, "a – b" otherwise, "–" when there are none."""
    if not values:
        return "–"
    return f"{values[0]:,}" if values[0] == values[-1] else f"{values[0]:,} – {values[-1]:,}"


# --- loading ---------------------------------------------------------------------------------


def load(results_dir: Path, grid: str) -> dict[str, list[dict[str, Any]]]:
    """The three JSONL files of one grid (missing files read as empty)."""
    parts = {
        part: ResultFile(results_dir / f"{grid}-{part}.jsonl").records()
        for part in ("search", "cells")
    }
    # A session rewrites its line after every cell; the last one per key counts.
    parts["sessions"] = list(ResultFile(results_dir / f"{grid}-sessions.jsonl").done().values())
    return parts


def finals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Final-grid records, one per key (a key written twice counts once)."""
    return list({r["key"]: r for r in records if r.get("phase") == "final"}.values())


@dataclass(frozen=True)
class GridResults:
    """One grid and what its JSONL files hold now: every grid section reads one of these."""

    grid: Grid
    cells: list[dict[str, Any]]  # final-grid records, one per key
    search: list[dict[str, Any]]  # lr-search records
    sessions: list[dict[str, Any]]  # one per study session (machine, wall time)
    results_dir: Path  # where the JSONL files are, and where the PNGs go
    png_prefix: str  # the PNGs are <png_prefix>-rank-b<b(T)>.png

    @classmethod
    def load(cls, results_dir: Path, grid: Grid) -> GridResults:
        """Read ``<grid.name>-{search,cells,sessions}.jsonl`` from ``results_dir``."""
        parts = load(results_dir, grid.name)
        return cls(
            grid=grid,
            cells=finals(parts["cells"]),
            search=parts["search"],
            sessions=parts["sessions"],
            results_dir=results_dir,
            png_prefix=grid.name,
        )

    @property
    def expected_cells(self) -> int:
        """Cells of the finished grid: datasets x methods x budgets x seeds."""
        g = self.grid
        return len(g.datasets) * len(g.methods) * len(g.budgets) * len(g.seeds)


def titled(title: str, body: str) -> list[str]:
    """A report subsection: a level-3 heading, a blank line, the body, a blank line."""
    return [f"### {title}", "", body, ""]
