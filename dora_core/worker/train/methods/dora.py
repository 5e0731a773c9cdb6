"""``dora``: our tuner (dora_core.tuner), b(T) = target_rank, r' = the plan's start rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dora_core.config import DoraConfig
from dora_core.contracts.rundir import ADAPTER_DIR, DORA_DIR
from dora_core.reporting import TunerTelemetry
from dora_core.tuner import inject
from dora_core.worker.train.methods.base import Method, StepResult
from dora_core.worker.train.plan import MethodPlan


class DoraMethod(TunerTelemetry, Method):
    """Telemetry (smoothed scores, masks, budget, sizes) is ``TunerTelemetry``'s view."""

    name = "dora"

    def __init__(self, model: nn.Module, spec: MethodPlan):
        self.model, self.spec = model, spec
        super().__init__(inject(model, spec.dora_config()))

    @classmethod
    def build(cls, model: nn.Module, spec: MethodPlan) -> DoraMethod:
        return cls(model, spec)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.tuner.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for h in self.tuner.heads for p in self.model.get_submodule(h).parameters()]

    def regularization(self) -> Tensor:
        return self.tuner.regularization()

    def step(self, step: int, optimizer: torch.optim.Optimizer) -> StepResult:
        info = self.tuner.step(optimizer)
        return StepResult(info.event, info.compacted)

    def modules(self) -> list[dict]:
        return self.tuner.modules_info()

    def register_body(self) -> dict:
        return TunerTelemetry.register_body(self)

    def result_extras(self) -> dict[str, Any]:
        return {"rank_pattern": self.tuner.rank_pattern()}

    def state_dict(self) -> dict[str, Any]:
        return {"tuner": self.tuner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tuner.load_state_dict(state["tuner"])

    def save_final(self, run_dir: Path, tokenizer: Any) -> None:
        self.tuner.save(run_dir / DORA_DIR)
        self.export_adapter(run_dir / ADAPTER_DIR)
        tokenizer.save_pretrained(run_dir / ADAPTER_DIR)

    def export_adapter(self, out: Path) -> None:
        self.tuner.export_peft(out, self.peft_task_type)

    def merged(self) -> nn.Module:
        self.tuner.merge()
        return self.model

    @classmethod
    def merge_saved(cls, base: nn.Module, run_dir: Path) -> nn.Module:
        saved = run_dir / DORA_DIR
        inject(base, DoraConfig.load(saved)).load(saved).merge()
        return base
