"""What a training method's state looks like as telemetry records.

Shared by the Trainer callback (here, in the library) and the worker's loop
(``dora_core.worker``): both report through a ``reporter`` with the verbs
``register / scores / budget / scalars / event`` (``dora_core.worker.telemetry.Reporter``
or anything shaped like it), and both describe what they train as a
``Reportable``. ``TunerTelemetry`` is a DoraTuner seen that way.
"""

from __future__ import annotations

from typing import Any, Protocol

from dora_core.tuner import DoraTuner


class Reportable(Protocol):
    """A method as the telemetry sees it."""

    def scores_and_masks(self) -> tuple[dict[str, list[float]], dict[str, list[int]]] | None:
        """Per module: scores and 0/1 masks of every component; None when it has none."""

    def scores_move(self, step: int) -> bool:
        """Whether scores can still change (they are sent every report step while they do)."""

    def budget(self, step: int) -> dict[str, Any] | None:
        """{"step", "target", "live", "b"} at ``step``; None for a method without one."""


def report_state(reporter: Any, source: Reportable, step: int, force_scores: bool = False) -> None:
    """Scores + masks (while they move, or when forced) and the budget at ``step``."""
    snapshot = source.scores_and_masks()
    if snapshot is not None and (force_scores or source.scores_move(step)):
        reporter.scores(step, *snapshot)
    budget = source.budget(step)
    if budget is not None:
        reporter.budget(step, budget["target"], budget["live"], budget["b"])


def report_event(reporter: Any, source: Reportable, step: int, event: str) -> None:
    """A pruning event ("prune" / "mask_frozen") with the budget as its data."""
    budget = source.budget(step) or {}
    live, target = budget.get("live"), budget.get("target")
    if event == "mask_frozen":
        message = f"mask frozen with {live} live components"
    else:
        message = f"pruned to {live} live components (target {target})"
    reporter.event(step, event, message, budget or None)


class TunerTelemetry:
    """A DoraTuner as a ``Reportable``: smoothed scores (Eq. 8), masks, the budget b(t)."""

    def __init__(self, tuner: DoraTuner):
        self.tuner = tuner

    def scores_and_masks(self) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
        scores = {n: s.float().tolist() for n, s in self.tuner.scores().items()}
        masks = {n: m.int().tolist() for n, m in self.tuner.masks().items()}
        return scores, masks

    def scores_move(self, step: int) -> bool:
        return not self.tuner.frozen

    def budget(self, step: int) -> dict[str, Any]:
        return self.tuner.budget()

    def param_counts(self) -> dict[str, int]:
        counts = self.tuner.param_counts()
        return {**counts, "trainable": counts["adapter"] + counts["head"]}

    def register_body(self) -> dict[str, Any]:
        """The body of the reporter's ``register`` call: modules, calendar, ranks, sizes."""
        config = self.tuner.config
        return {
            "modules": self.tuner.modules_info(),
            "total_steps": config.total_steps,
            "init_rank": config.init_rank,
            "target_rank": config.target_rank,
            "params": self.param_counts(),
        }
