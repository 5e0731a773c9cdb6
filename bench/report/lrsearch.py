"""The learning-rate search: dev macro-F1 / accuracy of every lr tried, the chosen one."""

from __future__ import annotations

from typing import Any

from bench.report.common import METHOD_NAMES, GridResults, titled
from bench.study_grid import Grid, search_cells, select_lr


def section(results: GridResults) -> list[str]:
    search = results.search
    body = search_table(search, results.grid) if search else "Not started."
    return titled("Learning-rate search (dev macro-F1 / accuracy, %)", body)


def search_table(search: list[dict[str, Any]], grid: Grid) -> str:
    """Dev macro-F1 / accuracy of every lr tried; the chosen lr in bold."""
    chosen = select_lr(search)
    by_key = {(r["dataset"], r["method"], r["lr"]): r for r in search}
    header = ["dataset", "method", *[f"lr {lr:g}" for lr in grid.lrs], "chosen"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for plan in grid.datasets:
        for m in grid.methods:
            row = [plan.name, METHOD_NAMES[m]]
            for lr in grid.lrs:
                rec = by_key.get((plan.name, m, lr))
                if rec is None:
                    row.append("–")
                    continue
                text = f"{rec['macro_f1'] * 100:.1f} / {rec['accuracy'] * 100:.1f}"
                bold = chosen.get((plan.name, m)) == lr and search_complete(search, grid, plan.name)
                row.append(f"**{text}**" if bold else text)
            done = search_complete(search, grid, plan.name)
            row.append(f"{chosen[(plan.name, m)]:g}" if done else "(searching)")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def search_complete(search: list[dict[str, Any]], grid: Grid, dataset: str) -> bool:
    """Whether every lr of every method has been tried on ``dataset``."""
    keys = {r["key"] for r in search}
    return all(c.key(grid) in keys for c in search_cells(grid) if c.dataset == dataset)
