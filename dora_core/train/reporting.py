"""What a method's state looks like on the wire; shared by the loop and the Trainer callback."""

from __future__ import annotations

from typing import Any

from dora_core.train.methods import Method


def report_state(reporter: Any, method: Method, step: int, force_scores: bool = False) -> None:
    """Scores + masks (while they move, or when forced) and the budget at ``step``."""
    snapshot = method.scores_and_masks()
    if snapshot is not None and (force_scores or method.scores_move(step)):
        reporter.scores(step, *snapshot)
    budget = method.budget(step)
    if budget is not None:
        reporter.budget(step, budget["target"], budget["live"], budget["b"])


def report_event(reporter: Any, method: Method, step: int, event: str) -> None:
    """A pruning event ("prune" / "mask_frozen") with the budget as its data."""
    budget = method.budget(step) or {}
    live, target = budget.get("live"), budget.get("target")
    if event == "mask_frozen":
        message = f"mask frozen with {live} live components"
    else:
        message = f"pruned to {live} live components (target {target})"
    reporter.event(step, event, message, budget or None)
