"""Time per cell: the worker's own training clock and the whole process' wall time."""

from __future__ import annotations

from typing import Any

from bench.report.common import METHOD_NAMES, GridResults, titled
from bench.study_grid import Grid, mean_std


def section(results: GridResults) -> list[str]:
    cells = results.cells
    return titled("Time per cell", time_table(cells, results.grid) if cells else "No cells yet.")


def time_table(records: list[dict[str, Any]], grid: Grid) -> str:
    """Mean training time per cell (the worker's own clock) and the whole process' wall time."""
    lines = [
        "| dataset | steps | tokens | "
        + " | ".join(f"{METHOD_NAMES[m]} train s / wall s" for m in grid.methods)
        + " |"
    ]
    lines.append("|" + "---|" * (3 + len(grid.methods)))
    for plan in grid.datasets:
        row = [plan.name, str(plan.steps), str(plan.max_length)]
        for m in grid.methods:
            recs = [r for r in records if r["dataset"] == plan.name and r["method"] == m]
            if not recs:
                row.append("–")
                continue
            train = mean_std([r["train_s"] for r in recs])[0]
            wall = mean_std([r["wall_s"] for r in recs])[0]
            row.append(f"{train:.0f} / {wall:.0f} (n={len(recs)})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
