"""Study tests; ``fake_record`` is the result line the planners' tests feed them."""

from typing import Any

from bench.study_grid import DatasetPlan, Grid


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


def two_dataset_grid(bbc_steps: int, bbc_length: int) -> Grid:
    """A small grid on sms-spam and bbc-news (2 budgets, 2 seeds, 2 learning rates)."""
    return Grid(
        name="t",
        datasets=(
            DatasetPlan("sms-spam", steps=10, max_length=24, max_train=64, max_dev=16),
            DatasetPlan(
                "bbc-news", steps=bbc_steps, max_length=bbc_length, max_train=64, max_dev=16
            ),
        ),
        budgets=(2, 8),
        seeds=(0, 1),
        lrs=(1e-3, 3e-3),
    )
