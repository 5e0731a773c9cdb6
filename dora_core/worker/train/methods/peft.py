"""``lora`` and ``adalora`` through the real ``peft`` package, on DoRA's calendar.

- ``lora``: PEFT LoRA at rank b(T), the same target layers and head as DoRA.
- ``adalora``: PEFT AdaLoRA with init_r = r', target_r = b(T) and its schedule
  on DoRA's calendar: tinit = t_i, tfinal = t_f, deltaT = prune_interval,
  total_step = T (the phase boundaries come from the same DoraConfig, so
  both methods round them alike).

Telemetry is comparable across methods: LoRA and AdaLoRA send the Eq. 7
shares (``component_importance``) of each layer's current factors (AdaLoRA's
own sensitivity scores are not shares); masks are the live components (all
live for LoRA, AdaLoRA's rank pattern).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dora_core.config import DoraConfig
from dora_core.contracts.rundir import ADAPTER_DIR
from dora_core.importance import component_importance
from dora_core.layer import layer_shape
from dora_core.targets import block_position, find_heads, find_targets
from dora_core.worker.train.methods.base import PEFT_TASK_TYPES, Method, StepResult, count
from dora_core.worker.train.plan import MethodPlan


class PeftMethod(Method):
    """A transformers model wrapped by ``peft.get_peft_model``."""

    def __init__(self, model: nn.Module, spec: MethodPlan, peft_config: Any, targets: list[str]):
        from peft import get_peft_model

        self.base, self.spec, self.targets = model, spec, targets
        self._info = []
        for name in targets:
            layer, mtype = block_position(model, name)
            shape = list(layer_shape(model.get_submodule(name)))
            self._info.append({"name": name, "layer": layer, "type": mtype, "shape": shape})
        self.model = get_peft_model(model, peft_config)

    @staticmethod
    def resolve(model: nn.Module, spec: MethodPlan) -> tuple[list[str], list[str] | None]:
        """PEFT gets resolved names, so both libraries adapt exactly the same layers."""
        heads = find_heads(model, None)
        return find_targets(model, spec.settings["target_modules"]), heads or None

    def _lora_layers(self) -> dict[str, nn.Module]:
        inner = self.model.base_model.model
        return {name: inner.get_submodule(name) for name in self.targets}

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.trainable() if "modules_to_save" in n]

    def modules(self) -> list[dict]:
        ranks = {n: _rank(layer) for n, layer in self._lora_layers().items()}
        return [dict(row, rank=ranks[row["name"]]) for row in self._info]

    def param_counts(self) -> dict[str, int]:
        head = count(self.head_parameters())
        trainable = count(p for _, p in self.trainable())
        total = count(self.base.parameters())
        return {"adapter": trainable - head, "head": head, "trainable": trainable, "total": total}

    def save_final(self, run_dir: Path, tokenizer: Any) -> None:
        self.export_adapter(run_dir / ADAPTER_DIR)
        tokenizer.save_pretrained(run_dir / ADAPTER_DIR)

    def export_adapter(self, out: Path) -> None:
        self.model.save_pretrained(out)

    def merged(self) -> nn.Module:
        return self.model.merge_and_unload()

    @classmethod
    def merge_saved(cls, base: nn.Module, run_dir: Path) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, run_dir / ADAPTER_DIR).merge_and_unload()


def _rank(layer: nn.Module) -> int:
    """Components of a PEFT layer: LoRA's lora_A is an nn.Linear, AdaLoRA's a Parameter."""
    a = layer.lora_A["default"]
    return int((a.weight if isinstance(a, nn.Linear) else a).shape[0])


class LoraMethod(PeftMethod):
    name = "lora"

    @classmethod
    def build(cls, model: nn.Module, spec: MethodPlan) -> LoraMethod:
        from peft import LoraConfig

        targets, heads = cls.resolve(model, spec)
        config = LoraConfig(
            r=spec.target_rank,
            lora_alpha=spec.settings["alpha"],
            lora_dropout=spec.settings["dropout"],
            target_modules=targets,
            modules_to_save=heads,
            task_type=PEFT_TASK_TYPES[spec.task],
        )
        return cls(model, spec, config, targets)

    def scores_and_masks(self) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
        scores, masks = {}, {}
        for name, layer in self._lora_layers().items():
            A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            scores[name] = component_importance(
                A, B, torch.ones(A.shape[0], device=A.device)
            ).tolist()
            masks[name] = [1] * A.shape[0]
        return scores, masks

    def budget(self, step: int) -> dict:
        """Constant: every layer holds b(T) live components from start to end."""
        rank = self.model.peft_config["default"].r
        live = rank * len(self.targets)
        return {"step": step, "target": live, "live": live, "b": float(rank)}


class AdaLoraMethod(PeftMethod):
    name = "adalora"

    def __init__(self, model: nn.Module, spec: MethodPlan, calendar: DoraConfig):
        from peft import AdaLoraConfig

        self.calendar = calendar
        targets, heads = self.resolve(model, spec)
        config = AdaLoraConfig(
            init_r=calendar.init_rank,
            target_r=calendar.target_rank,
            tinit=calendar.warmup_steps,
            tfinal=calendar.final_steps,
            deltaT=calendar.prune_interval,
            total_step=calendar.total_steps,
            lora_alpha=calendar.alpha,
            lora_dropout=calendar.dropout,
            target_modules=targets,
            modules_to_save=heads,
            task_type=PEFT_TASK_TYPES[spec.task],
        )
        super().__init__(model, spec, config, targets)

    @classmethod
    def build(cls, model: nn.Module, spec: MethodPlan) -> AdaLoraMethod:
        return cls(model, spec, spec.dora_config())

    @property
    def _allocator(self) -> Any:
        return self.model.base_model.rankallocator

    def step(self, step: int, optimizer: torch.optim.Optimizer) -> StepResult:
        self.model.base_model.update_and_allocate(step)
        config = self.model.peft_config["default"]
        freeze = self.calendar.freeze_step
        if step == freeze:
            return StepResult("mask_frozen")
        if step < freeze and step > config.tinit and step % config.deltaT == 0:
            return StepResult("prune")
        return StepResult()

    def _rank_pattern(self) -> dict[str, list[bool]] | None:
        return self.model.peft_config["default"].rank_pattern

    def _masks(self) -> dict[str, list[int]]:
        """AdaLoRA's rank pattern (keyed by lora_E parameter name); all live before the first event."""
        pattern = self._rank_pattern() or {}
        out = {}
        for name, layer in self._lora_layers().items():
            keep = pattern.get(f"{name}.lora_E.default", pattern.get(f"{name}.lora_E"))
            rank = layer.lora_E["default"].shape[0]
            out[name] = [int(bool(v)) for v in keep] if keep is not None else [1] * rank
        return out

    def scores_and_masks(self) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
        masks = self._masks()
        scores = {}
        for name, layer in self._lora_layers().items():
            A, B, E = layer.lora_A["default"], layer.lora_B["default"], layer.lora_E["default"]
            scores[name] = component_importance(A, B, E.flatten()).tolist()
        return scores, masks

    def budget(self, step: int) -> dict:
        total, _ = self._allocator.budget_schedule(step)
        live = sum(sum(m) for m in self._masks().values())
        return {
            "step": step,
            "target": int(total),
            "live": int(live),
            "b": total / max(1, len(self.targets)),
        }

    def scores_move(self, step: int) -> bool:
        return step <= self.calendar.freeze_step

    def state_dict(self) -> dict[str, Any]:
        allocator = self._allocator
        return {
            **super().state_dict(),
            "ipt": {k: v.clone() for k, v in allocator.ipt.items()},
            "exp_avg_ipt": {k: v.clone() for k, v in allocator.exp_avg_ipt.items()},
            "exp_avg_unc": {k: v.clone() for k, v in allocator.exp_avg_unc.items()},
            "rank_pattern": self._rank_pattern(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        allocator = self._allocator
        allocator.ipt = dict(state["ipt"])
        allocator.exp_avg_ipt = dict(state["exp_avg_ipt"])
        allocator.exp_avg_unc = dict(state["exp_avg_unc"])
        self.model.peft_config["default"].rank_pattern = state["rank_pattern"]
