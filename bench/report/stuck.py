"""Runs that never took off: a failure mode the means hide, listed per method."""

from __future__ import annotations

from typing import Any

from bench.report.common import METHOD_NAMES, GridResults
from bench.study_grid import Grid


def section(results: GridResults) -> list[str]:
    """The count per method and one line per stuck run (nothing before the first cell)."""
    return [*(stuck_reading(results.cells, results.grid) if results.cells else []), ""]


def did_not_learn(record: dict[str, Any]) -> bool:
    """A run whose dev macro-F1 stays within 0.02 of 1/classes: it predicts (almost) one class
    for everything, i.e. training never took off (sms-spam all-ham scores 0.46, a balanced
    binary set 0.33)."""
    from dora_core.contracts.presets import DATASETS

    classes = DATASETS[record["dataset"]].num_labels or 2
    return record["macro_f1"] < 1 / classes + 0.02


def stuck_reading(records: list[dict[str, Any]], grid: Grid) -> list[str]:
    """Which grid runs never took off, per method: a failure mode the means hide."""
    stuck = [r for r in records if did_not_learn(r)]
    counts = {m: sum(r["method"] == m for r in stuck) for m in grid.methods}
    totals = {m: sum(r["method"] == m for r in records) for m in grid.methods}
    lines = [
        "Runs that did not learn (dev macro-F1 within 0.02 of 1/classes: one-class predictions): "
        + ", ".join(f"{METHOD_NAMES[m]} {counts[m]} of {totals[m]}" for m in grid.methods)
        + "."
    ]
    for r in sorted(stuck, key=lambda r: (r["method"], r["dataset"], r["budget"], r["seed"])):
        lines.append(
            f"- {METHOD_NAMES[r['method']]}: {r['dataset']}, b(T)={r['budget']}, seed {r['seed']}, "
            f"lr {r['lr']:g}: accuracy {r['accuracy'] * 100:.1f}, macro-F1 {r['macro_f1'] * 100:.1f}."
        )
    return lines
