"""The interface every training method gives the loop, and what they share.

The loop, the export commands and the telemetry call the same verbs on
every method; nothing outside this package branches on a method's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dora_core.contracts.wire import METHODS, MethodInfo
from dora_core.targets import find_heads
from dora_core.worker.train.plan import MethodPlan


@dataclass(frozen=True)
class StepResult:
    event: str | None = None  # "prune" / "mask_frozen" / None
    compacted: bool = False  # parameter shapes changed (re-wrap DDP)


# The job's task -> PEFT's task type (which PeftModel class loads the adapter).
PEFT_TASK_TYPES = {"classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


def count(params: Any) -> int:
    return sum(p.numel() for p in params)


class Method:
    """What the loop needs from a method; ``model`` is what forward() is called on."""

    name: ClassVar[str]
    model: nn.Module
    spec: MethodPlan

    @classmethod
    def build(cls, model: nn.Module, spec: MethodPlan) -> Method:
        """Wrap ``model`` for training (seed the RNG first: adapters start random)."""
        raise NotImplementedError

    @property
    def info(self) -> MethodInfo:
        return METHODS[self.name]

    @property
    def peft_task_type(self) -> str:
        return PEFT_TASK_TYPES[self.spec.task]

    # --- optimisation -----------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """The task head's trainable parameters (they get ``head_lr`` when a job sets it)."""
        heads = find_heads(self.model, None)
        return [
            p for h in heads for p in self.model.get_submodule(h).parameters() if p.requires_grad
        ]

    def param_groups(self, lr: float, head_lr: float | None) -> list[dict[str, Any]]:
        """Optimizer groups: one (every parameter at ``lr``) unless the head has its own rate."""
        params = self.parameters()
        if head_lr is None:
            return [{"params": params, "lr": lr}]
        head = {id(p) for p in self.head_parameters()}
        return [
            {"params": [p for p in params if id(p) not in head], "lr": lr},
            {"params": [p for p in params if id(p) in head], "lr": head_lr},
        ]

    def regularization(self) -> Tensor | None:
        return None

    def step(self, step: int, optimizer: torch.optim.Optimizer) -> StepResult:
        """Called once per optimizer step, after optimizer.step(), before zero_grad()."""
        return StepResult()

    # --- telemetry (dora_core.reporting.Reportable) ------------------------------------------
    def modules(self) -> list[dict]:
        return []

    def register_body(self) -> dict:
        """The body of the reporter's ``register`` call."""
        return {
            "modules": self.modules(),
            "total_steps": self.spec.total_steps,
            "init_rank": self.spec.start_rank,
            "target_rank": self.spec.target_rank if self.info.adapter else None,
            "params": self.param_counts(),
        }

    def param_counts(self) -> dict[str, int]:
        total = count(self.model.parameters())
        return {"adapter": 0, "head": 0, "trainable": count(self.parameters()), "total": total}

    def scores_and_masks(self) -> tuple[dict[str, list[float]], dict[str, list[int]]] | None:
        return None

    def budget(self, step: int) -> dict | None:
        return None

    def scores_move(self, step: int) -> bool:
        return False

    def result_extras(self) -> dict[str, Any]:
        """Method-specific fields of result.json."""
        return {}

    # --- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Trainable weights plus method state, for exact resume."""
        return {"weights": {n: p.detach().clone() for n, p in self.trainable()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = state["weights"]
        with torch.no_grad():
            for name, param in self.trainable():
                param.copy_(weights[name])

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    # --- shipping -----------------------------------------------------------------------
    def save_final(self, run_dir: Path, tokenizer: Any) -> None:
        """Everything a finished run keeps (adapter, tuner state or the whole model)."""
        raise NotImplementedError

    def export_adapter(self, out: Path) -> None:
        """A PEFT adapter folder of the current weights (from a checkpoint, say)."""
        raise ValueError(
            "method: a full fine-tune has no adapter; use `dora merge` for the whole model"
        )

    def merged(self) -> nn.Module:
        """The plain transformers model with the update folded in (for `dora merge`)."""
        raise NotImplementedError

    @classmethod
    def merge_saved(cls, base: nn.Module, run_dir: Path) -> nn.Module:
        """A finished run's saved update folded into ``base`` (no checkpoint needed)."""
        raise NotImplementedError
