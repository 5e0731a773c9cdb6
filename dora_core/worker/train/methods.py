"""The four training methods behind one small interface the loop drives.

- ``dora``: our tuner (dora_core.tuner), b(T) = target_rank, r' = start_rank.
- ``lora``: real PEFT LoRA at rank b(T), the same target layers and head.
- ``adalora``: real PEFT AdaLoRA with init_r = r', target_r = b(T), and its
  schedule on the same calendar (tinit = t_i, tfinal = t_f, deltaT =
  prune_interval, total_step = T).
- ``full``: every weight trains.

Telemetry is comparable across methods: DoRA sends its smoothed scores
(Eq. 8), LoRA and AdaLoRA the Eq. 7 shares (``component_importance``) of
each layer's current factors (AdaLoRA's own sensitivity scores are not
shares); masks are the live components (all live for LoRA, AdaLoRA's rank
pattern).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dora_core.config import DoraConfig, round_half_up
from dora_core.contracts.job import JobConfig
from dora_core.contracts.rundir import ADAPTER_DIR, DORA_DIR, MODEL_DIR
from dora_core.importance import component_importance
from dora_core.reporting import TunerTelemetry
from dora_core.targets import block_position, find_heads, find_targets
from dora_core.tuner import inject


@dataclass(frozen=True)
class StepResult:
    event: str | None = None  # "prune" / "mask_frozen" / None
    compacted: bool = False  # parameter shapes changed (re-wrap DDP)


def dora_config(job: JobConfig, total_steps: int) -> DoraConfig:
    """The library config for a job; T is only known once the data is split."""
    return DoraConfig(
        total_steps=total_steps,
        target_rank=job.target_rank,
        init_rank=job.start_rank,
        target_modules=job.target_modules,
        alpha=job.alpha,
        dropout=job.dropout,
        beta=job.beta,
        warmup_frac=job.warmup_frac,
        final_frac=job.final_frac,
        prune_interval=job.prune_interval,
        dem_weight=job.dem_weight,
        dem_after_freeze=job.dem_after_freeze,
    )


def _count(params: Any) -> int:
    return sum(p.numel() for p in params)


class Method:
    """What the loop needs from a method; ``model`` is what forward() is called on."""

    name = "base"
    model: nn.Module

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

    def modules(self) -> list[dict]:
        return []

    def register_body(self, total_steps: int, job: JobConfig) -> dict:
        init = job.target_rank if self.name == "lora" else job.start_rank
        return {
            "modules": self.modules(),
            "total_steps": total_steps,
            "init_rank": None if self.name == "full" else init,
            "target_rank": None if self.name == "full" else job.target_rank,
            "params": self.param_counts(),
        }

    def param_counts(self) -> dict[str, int]:
        total = _count(self.model.parameters())
        return {"adapter": 0, "head": 0, "trainable": _count(self.parameters()), "total": total}

    def scores_and_masks(self) -> tuple[dict[str, list[float]], dict[str, list[int]]] | None:
        return None

    def budget(self, step: int) -> dict | None:
        return None

    def scores_move(self, step: int) -> bool:
        """Whether scores can still change (they are sent every report step while they do)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """Trainable weights plus method state, for exact resume."""
        return {"weights": {n: p.detach().clone() for n, p in self._trainable()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = state["weights"]
        with torch.no_grad():
            for name, param in self._trainable():
                param.copy_(weights[name])

    def _trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def save_final(self, run_dir: Path, tokenizer: Any) -> None:
        raise NotImplementedError

    def merged(self) -> nn.Module:
        """The plain transformers model with the update folded in (for `dora merge`)."""
        raise NotImplementedError


class DoraMethod(TunerTelemetry, Method):
    """Our tuner; its telemetry view (scores, masks, budget, sizes) is ``TunerTelemetry``'s."""

    name = "dora"

    def __init__(self, model: nn.Module, config: DoraConfig):
        self.model = model
        super().__init__(inject(model, config))

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

    def state_dict(self) -> dict[str, Any]:
        return {"tuner": self.tuner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tuner.load_state_dict(state["tuner"])

    def save_final(self, run_dir: Path, tokenizer: Any) -> None:
        self.tuner.save(run_dir / DORA_DIR)
        self.tuner.export_peft(run_dir / ADAPTER_DIR)
        tokenizer.save_pretrained(run_dir / ADAPTER_DIR)

    def merged(self) -> nn.Module:
        self.tuner.merge()
        return self.model


class PeftMethod(Method):
    """LoRA / AdaLoRA through the real ``peft`` package (wrapping the transformers model)."""

    def __init__(self, model: nn.Module, peft_config: Any, targets: list[str], heads: list[str]):
        from peft import get_peft_model

        self.base = model
        self.targets = targets
        self.heads = heads
        self._info = [
            {
                "name": name,
                "layer": block_position(model, name)[0],
                "type": block_position(model, name)[1],
                "shape": list(_shape(model.get_submodule(name))),
                "rank": None,
            }
            for name in targets
        ]
        self.model = get_peft_model(model, peft_config)

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self._trainable() if "modules_to_save" in n]

    def _lora_layers(self) -> dict[str, nn.Module]:
        inner = self.model.base_model.model
        return {name: inner.get_submodule(name) for name in self.targets}

    def modules(self) -> list[dict]:
        ranks = {n: _rank(layer) for n, layer in self._lora_layers().items()}
        return [dict(row, rank=ranks[row["name"]]) for row in self._info]

    def param_counts(self) -> dict[str, int]:
        head = _count(p for n, p in self._trainable() if "modules_to_save" in n)
        trainable = _count(p for _, p in self._trainable())
        total = _count(self.base.parameters())
        return {"adapter": trainable - head, "head": head, "trainable": trainable, "total": total}

    def save_final(self, run_dir: Path, tokenizer: Any) -> None:
        self.model.save_pretrained(run_dir / ADAPTER_DIR)
        tokenizer.save_pretrained(run_dir / ADAPTER_DIR)

    def merged(self) -> nn.Module:
        return self.model.merge_and_unload()


def _rank(layer: nn.Module) -> int:
    """Components of a PEFT layer: LoRA's lora_A is an nn.Linear, AdaLoRA's a Parameter."""
    a = layer.lora_A["default"]
    return int((a.weight if isinstance(a, nn.Linear) else a).shape[0])


def _shape(module: nn.Module) -> tuple[int, int]:
    from dora_core.layer import layer_shape

    return layer_shape(module)


class LoraMethod(PeftMethod):
    name = "lora"

    def __init__(self, model: nn.Module, job: JobConfig, targets: list[str], heads: list[str]):
        from peft import LoraConfig

        config = LoraConfig(
            r=job.target_rank,
            lora_alpha=job.alpha,
            lora_dropout=job.dropout,
            target_modules=targets,
            modules_to_save=heads or None,
        )
        super().__init__(model, config, targets, heads)

    def scores_and_masks(self) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
        scores, masks = {}, {}
        for name, layer in self._lora_layers().items():
            A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            scores[name] = component_importance(A, B, torch.ones(A.shape[0])).tolist()
            masks[name] = [1] * A.shape[0]
        return scores, masks

    def budget(self, step: int) -> dict:
        """Constant: every layer holds b(T) live components from start to end."""
        rank = self.model.peft_config["default"].r
        live = rank * len(self.targets)
        return {"step": step, "target": live, "live": live, "b": float(rank)}


class AdaLoraMethod(PeftMethod):
    name = "adalora"

    def __init__(
        self,
        model: nn.Module,
        job: JobConfig,
        targets: list[str],
        heads: list[str],
        total_steps: int,
    ):
        from peft import AdaLoraConfig

        self.total_steps = total_steps
        self.tfinal = round_half_up(job.final_frac * total_steps)
        config = AdaLoraConfig(
            init_r=job.start_rank,
            target_r=job.target_rank,
            tinit=round_half_up(job.warmup_frac * total_steps),
            tfinal=self.tfinal,
            deltaT=job.prune_interval,
            total_step=total_steps,
            lora_alpha=job.alpha,
            lora_dropout=job.dropout,
            target_modules=targets,
            modules_to_save=heads or None,
        )
        super().__init__(model, config, targets, heads)

    @property
    def _allocator(self) -> Any:
        return self.model.base_model.rankallocator

    def step(self, step: int, optimizer: torch.optim.Optimizer) -> StepResult:
        self.model.base_model.update_and_allocate(step)
        config = self.model.peft_config["default"]
        freeze = self.total_steps - self.tfinal
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
        allocator = self._allocator
        total, _ = allocator.budget_schedule(step)
        live = sum(sum(m) for m in self._masks().values())
        return {
            "step": step,
            "target": int(total),
            "live": int(live),
            "b": total / max(1, len(self.targets)),
        }

    def scores_move(self, step: int) -> bool:
        return step <= self.total_steps - self.tfinal

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


class FullMethod(Method):
    name = "full"

    def __init__(self, model: nn.Module):
        self.model = model
        for p in model.parameters():
            p.requires_grad_(True)

    def save_final(self, run_dir: Path, tokenizer: Any) -> None:
        self.model.save_pretrained(run_dir / MODEL_DIR)
        tokenizer.save_pretrained(run_dir / MODEL_DIR)

    def merged(self) -> nn.Module:
        return self.model


def build_method(model: nn.Module, job: JobConfig, total_steps: int) -> Method:
    """Wrap ``model`` for the job's method (seed the RNG first: adapters start random)."""
    if job.method == "full":
        return FullMethod(model)
    if job.method == "dora":
        return DoraMethod(model, dora_config(job, total_steps))
    # PEFT gets the resolved names, so both libraries adapt exactly the same layers.
    targets = find_targets(model, job.target_modules)
    heads = find_heads(model, None)
    if job.method == "lora":
        return LoraMethod(model, job, targets, heads)
    return AdaLoraMethod(model, job, targets, heads, total_steps)
