"""``full``: every weight trains; the run keeps the whole fine-tuned model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dora_core.contracts.rundir import MODEL_DIR
from dora_core.worker.train.methods.base import Method
from dora_core.worker.train.plan import MethodPlan


class FullMethod(Method):
    name = "full"

    def __init__(self, model: nn.Module, spec: MethodPlan):
        self.model, self.spec = model, spec
        for p in model.parameters():
            p.requires_grad_(True)

    @classmethod
    def build(cls, model: nn.Module, spec: MethodPlan) -> FullMethod:
        return cls(model, spec)

    def save_final(self, run_dir: Path, tokenizer: Any) -> None:
        self.model.save_pretrained(run_dir / MODEL_DIR)
        tokenizer.save_pretrained(run_dir / MODEL_DIR)

    def merged(self) -> nn.Module:
        return self.model
