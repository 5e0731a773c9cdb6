"""Study tests; ``fake_record`` is the result line the planners' tests feed them."""

from typing import Any


def fake_record(cell: Any, grid: Any, score: float) -> dict[str, Any]:
    """A result line for ``cell`` as the study writes one, with macro-F1 = accuracy = score."""
    return {
        "key": cell.key(grid),
        "grid": grid.name,
        "phase": cell.phase,
        "dataset": cell.dataset,
        "method": cell.method,
        "budget": cell.budget,
        "seed": cell.seed,
        "lr": cell.lr,
        "macro_f1": score,
        "accuracy": score,
    }
