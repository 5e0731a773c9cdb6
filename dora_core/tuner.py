"""DoraTuner: the method's face towards a training loop.

How a training loop drives the tuner
====================================

::

    tuner = inject(model, DoraConfig(total_steps=T, target_rank=8))
    optimizer = torch.optim.AdamW(tuner.parameters(), lr=5e-4, weight_decay=0.01)
    for step in range(T):                        # T = optimizer steps, as in the config
        for micro in micro_batches:              # gradient accumulation: any number
            loss = model(**micro).loss + tuner.regularization()
            (loss / len(micro_batches)).backward()
        torch.nn.utils.clip_grad_norm_(tuner.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        info = tuner.step(optimizer)             # once per optimizer step, after it
        optimizer.zero_grad(set_to_none=True)

- ``tuner.step(optimizer)`` exactly once per optimizer step, after
  ``optimizer.step()``, never per micro-batch: it scores the components from
  the updated weights, advances the EMA (Eq. 8) and runs the pruning event
  when one is due. Call it on AMP-skipped steps too (the schedule counts loop
  steps, like an LR scheduler). It returns a ``StepInfo`` (step, event
  ``"prune"`` / ``"mask_frozen"`` / None, target, live, b, compacted).
- ``tuner.regularization()`` is eta * R (Eq. 10), a zero tensor when off
  (dem_weight 0, or after the freeze unless dem_after_freeze). Add it to every
  micro-batch loss and scale it like the task loss.
- Compaction. At the freeze step T - t_f (or the first later
  ``step(optimizer)``) pruned rows are sliced out of A, B and c *in place*:
  the Parameter objects stay the same, so ``optimizer.param_groups``, LR
  schedulers and cached parameter lists remain valid, while parameter shapes
  shrink and ``.grad`` is reset to None. The optimizer's per-parameter state
  tensors (AdamW exp_avg / exp_avg_sq, momentum) are sliced the same way, so
  training continues exactly as an uncompacted run with the frozen mask.
  Pass the optimizer you step (accelerate's wrapper is unwrapped). Without an
  optimizer argument compaction waits: the frozen mask is applied in the
  forward, so pruned rows contribute exactly zero and get zero gradient;
  ``tuner.compact(optimizer)`` compacts explicitly; ``DoraConfig(compact=False)``
  never does.
- DDP (torchrun / accelerate): inject, then wrap. Scores and decisions are
  functions of the synchronised parameters, so every rank makes the same ones
  with no communication; report from rank 0 only. DDP's gradient buckets
  cannot follow a shape change, so on the step where ``info.compacted`` is
  True re-wrap, dropping the old wrapper first (it holds autograd hooks on
  the parameters)::

      module = ddp.module; del ddp; gc.collect(); ddp = DDP(module, ...)

  Where the wrapper cannot be rebuilt (e.g. a multi-process Trainer), use
  ``compact=False``.
- ``transformers.Trainer``: a ``TrainerCallback`` whose ``on_step_end`` calls
  ``tuner.step(kwargs["optimizer"])`` (Trainer calls it once per optimizer
  step), and a ``compute_loss`` override that adds ``tuner.regularization()``.
  Single-process compaction works as is (the optimizer's parameters keep
  their identity).
- Resume: ``tuner.state_dict()`` holds the trainable weights (adapters and
  modules_to_save), EMA scores, masks, gates, the step and the phase. Order:
  ``inject`` into a fresh model -> ``tuner.load_state_dict(sd)`` (re-compacts
  when the checkpoint was compacted) -> build the optimizer ->
  ``optimizer.load_state_dict(...)``. ``save(dir)`` / ``load(dir)`` do the same
  with files.
- Telemetry: ``modules_info()`` once (the protocol's register body),
  ``scores()``, ``masks()``, ``budget()`` per step.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dora_core.compaction import compact_layers
from dora_core.config import DoraConfig
from dora_core.export import export_peft as _export_peft
from dora_core.importance import component_importance, ema_update
from dora_core.layer import DoraLayer
from dora_core.pruning import select_top
from dora_core.regularizer import dem_penalty
from dora_core.schedule import budget_target, config_budget, is_prune_step
from dora_core.targets import block_position, find_heads, find_targets

STATE_FILE = "dora_state.safetensors"
META_FILE = "dora_meta.json"
_FORMAT = 1


@dataclass(frozen=True)
class StepInfo:
    """What one ``tuner.step()`` did."""

    step: int  # optimizer steps taken so far
    event: str | None  # "prune", "mask_frozen" (the last pruning event) or None
    target: int  # round(b(t) * L)
    live: int  # live components after this step
    b: float  # b(t)
    compacted: bool  # True on the call that compacted (re-wrap DDP now)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


class DoraTuner:
    """Holds the adapted layers of one model and runs the method on them."""

    def __init__(
        self, model: nn.Module, config: DoraConfig, layers: dict[str, DoraLayer], heads: list[str]
    ):
        self.model = model
        self.config = config
        self._layers = layers
        self.heads = heads
        self._step = 0
        self._live = config.init_rank * len(layers)
        self.frozen = False
        self.compacted = False
        self.merged = False
        self._info = []
        for name, layer in layers.items():
            block, kind = block_position(model, name)
            self._info.append(
                {
                    "name": name,
                    "layer": block,
                    "type": kind,
                    "shape": list(layer.shape),
                    "rank": layer.init_rank,
                }
            )

    # --- what the training loop uses ---
    @property
    def layers(self) -> dict[str, DoraLayer]:
        """Adapted layers by module name, in model order."""
        return dict(self._layers)

    @property
    def global_step(self) -> int:
        return self._step

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Trainable parameters (A, B, c of every layer, then modules_to_save) by model name."""
        for name, layer in self._layers.items():
            for pname in ("dora_A", "dora_B", "dora_c"):
                yield f"{name}.{pname}", getattr(layer, pname)
        for head in self.heads:
            for pname, param in self.model.get_submodule(head).named_parameters():
                yield f"{head}.{pname}", param

    def parameters(self) -> Iterator[nn.Parameter]:
        """What the optimizer should train."""
        for _, param in self.named_parameters():
            yield param

    def regularization(self) -> Tensor:
        """eta * R (Eq. 10); zero when dem_weight is 0 or after the freeze (by default)."""
        cfg = self.config
        if cfg.dem_weight == 0 or (self.frozen and not cfg.dem_after_freeze) or self.merged:
            return torch.zeros((), device=self._device())
        return cfg.dem_weight * dem_penalty(self._layers.values())

    def step(self, optimizer: object | None = None) -> StepInfo:
        """Advance one optimizer step: EMA of the scores, then a pruning event when due."""
        self._require_unmerged("step")
        self._zero_gated()
        self._step += 1
        t, cfg = self._step, self.config
        event = None
        if not self.frozen:
            self._update_scores()
            if t >= cfg.freeze_step or is_prune_step(cfg, t):
                self._prune(t)
                event = "prune"
                if t >= cfg.freeze_step:
                    self._freeze()
                    event = "mask_frozen"
        compacted = False
        if self.frozen and not self.compacted and cfg.compact and optimizer is not None:
            self.compact(optimizer)
            compacted = True
        b = config_budget(cfg, t)
        return StepInfo(t, event, budget_target(b, len(self._layers)), self._live, b, compacted)

    @torch.no_grad()
    def _update_scores(self) -> None:
        # Same-shaped layers are scored together: a few batched ops instead of
        # a dozen per layer (small per-layer BLAS calls stall on a busy CPU).
        groups: dict[tuple, list[DoraLayer]] = defaultdict(list)
        for layer in self._layers.values():
            A = layer.dora_A
            groups[(A.shape, layer.dora_B.shape, A.dtype, A.device)].append(layer)
        for group in groups.values():
            scores = component_importance(
                torch.stack([layer.dora_A for layer in group]),
                torch.stack([layer.dora_B for layer in group]),
                torch.stack([layer.dora_c * layer.gate for layer in group]),
            )
            for layer, layer_scores in zip(group, scores, strict=True):
                ema_update(layer.ema, layer_scores, self.config.beta)

    @torch.no_grad()
    def _prune(self, t: int) -> None:
        keep_count = budget_target(config_budget(self.config, t), len(self._layers))
        scores = torch.cat([layer.ema.cpu() for layer in self._layers.values()])
        keep = select_top(scores, keep_count)
        for layer, part in zip(
            self._layers.values(), keep.split(self.config.init_rank), strict=True
        ):
            layer.prune(part.to(layer.mask.device))
        self._live = keep_count

    def _freeze(self) -> None:
        for layer in self._layers.values():
            layer.freeze()
        self.frozen = True

    def compact(self, optimizer: object | None = None) -> None:
        """Slice pruned rows out of the factors (and the optimizer's state); see the module doc."""
        self._require_unmerged("compact")
        if not self.frozen:
            raise RuntimeError(
                f"compact: the mask freezes at step {self.config.freeze_step}; now at {self._step}"
            )
        if not self.compacted:
            compact_layers(self._layers.values(), optimizer)
            self.compacted = True

    # --- introspection (telemetry) ---
    def rank_pattern(self) -> dict[str, int]:
        """Live components per module."""
        return {name: int(layer.mask.sum()) for name, layer in self._layers.items()}

    def scores(self) -> dict[str, Tensor]:
        """Smoothed scores per module, length r' (frozen after the last pruning event)."""
        return {name: layer.ema.detach().clone() for name, layer in self._layers.items()}

    def masks(self) -> dict[str, Tensor]:
        """Live mask per module, length r' (all True before the first event)."""
        return {name: layer.mask.clone() for name, layer in self._layers.items()}

    def _zero_gated(self) -> None:
        """Pruned rows read c == 0 once the mask is frozen (see DoraLayer.zero_gated)."""
        for layer in self._layers.values():
            layer.zero_gated()

    def factors(self) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
        """(A, B, c, mask) per module, detached; r' rows until compaction, live rows after."""
        self._zero_gated()
        return {
            name: (
                layer.dora_A.detach().clone(),
                layer.dora_B.detach().clone(),
                layer.dora_c.detach().clone(),
                layer.mask[layer.index].clone(),
            )
            for name, layer in self._layers.items()
        }

    def budget(self) -> dict[str, Any]:
        """{"step", "target": round(b(t) * L), "live", "b": b(t)} at the current step."""
        b = config_budget(self.config, self._step)
        return {
            "step": self._step,
            "target": budget_target(b, len(self._layers)),
            "live": self._live,
            "b": b,
        }

    def modules_info(self) -> list[dict[str, Any]]:
        """Per module: name, layer (block index or None), type (name below the block),
        shape [d_out, d_in], rank r'. The body of the protocol's register call."""
        return [dict(row, shape=list(row["shape"])) for row in self._info]

    def param_counts(self) -> dict[str, int]:
        """Trainable adapter parameters (now), head parameters, all model parameters."""
        adapter = sum(
            p.numel()
            for layer in self._layers.values()
            for p in (layer.dora_A, layer.dora_B, layer.dora_c)
        )
        head = sum(p.numel() for h in self.heads for p in self.model.get_submodule(h).parameters())
        total = sum(p.numel() for p in self.model.parameters())
        return {"adapter": adapter, "head": head, "total": total}

    # --- exact resume ---
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to make the same decisions (tensors are copies)."""
        self._zero_gated()
        return {
            "format": _FORMAT,
            "config": self.config.to_dict(),
            "step": self._step,
            "live": self._live,
            "frozen": self.frozen,
            "compacted": self.compacted,
            "modules": {
                name: {
                    "ema": layer.ema.detach().clone(),
                    "mask": layer.mask.clone(),
                    "gate": layer.gate.clone(),
                    "index": layer.index.clone(),
                }
                for name, layer in self._layers.items()
            },
            "weights": {name: p.detach().clone() for name, p in self.named_parameters()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` into a tuner injected with the same config."""
        self._require_unmerged("load_state_dict")
        self._check_compatible(state)
        if state["compacted"]:
            if self.compacted:
                raise ValueError(
                    "load_state_dict: this tuner is already compacted; load into a freshly injected model"
                )
            for name, layer in self._layers.items():
                layer.compact_rows(state["modules"][name]["index"].to(layer.index.device))
            self.compacted = True
        with torch.no_grad():
            for name, layer in self._layers.items():
                saved = state["modules"][name]
                for key in ("ema", "mask", "gate", "index"):
                    getattr(layer, key).copy_(saved[key])
                layer.refresh_gated()
            weights = state["weights"]
            for name, param in self.named_parameters():
                if name not in weights or weights[name].shape != param.shape:
                    raise ValueError(
                        f"load_state_dict: weight {name!r} is missing or has another shape"
                    )
                param.copy_(weights[name])
        self._step = int(state["step"])
        self._live = int(state["live"])
        self.frozen = bool(state["frozen"])

    def _check_compatible(self, state: dict[str, Any]) -> None:
        if state.get("format") != _FORMAT:
            raise ValueError(f"load_state_dict: unknown state format {state.get('format')!r}")
        saved, ours = state["config"], self.config.to_dict()
        differ = [k for k in ours if saved.get(k) != ours[k]]
        if differ:
            details = ", ".join(f"{k} (saved {saved.get(k)!r}, here {ours[k]!r})" for k in differ)
            raise ValueError(
                f"load_state_dict: config differs in {details}; inject with the saved config "
                "(DoraConfig.load(dir))"
            )
        if list(state["modules"]) != list(self._layers):
            raise ValueError(
                "load_state_dict: the saved adapter covers other modules than this model's; "
                "load into the same model architecture"
            )

    def save(self, directory: str | Path) -> Path:
        """Write config, adapter weights and tuner state to ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        tensors = {f"weights/{k}": v for k, v in state["weights"].items()}
        for name, parts in state["modules"].items():
            tensors.update({f"{key}/{name}": value for key, value in parts.items()})
        save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(out / STATE_FILE))
        meta = {k: state[k] for k in ("format", "step", "live", "frozen", "compacted")}
        meta["modules"] = list(state["modules"])
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        self.config.save(out)
        return out

    def load(self, directory: str | Path) -> DoraTuner:
        """Restore from ``save(directory)``; returns self (``inject(model, cfg).load(dir)``)."""
        folder = Path(directory)
        if not (folder / STATE_FILE).is_file() or not (folder / META_FILE).is_file():
            raise ValueError(
                f"{folder} has no {STATE_FILE}; point at a folder written by tuner.save()"
            )
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / STATE_FILE))
        state = {**meta, "config": DoraConfig.load(folder).to_dict()}
        state["weights"] = {k[8:]: v for k, v in tensors.items() if k.startswith("weights/")}
        state["modules"] = {
            name: {key: tensors[f"{key}/{name}"] for key in ("ema", "mask", "gate", "index")}
            for name in meta["modules"]
        }
        self.load_state_dict(state)
        return self

    # --- shipping ---
    def export_peft(self, directory: str | Path, task_type: str | None = None) -> Path:
        """A PEFT LoRA adapter folder (uneven ranks) giving the same outputs; see export.py."""
        return _export_peft(
            self.model,
            self._layers,
            self.heads,
            directory,
            dropout=self.config.dropout,
            task_type=task_type,
        )

    def merge(self) -> None:
        """Fold every update into its base weight and put the plain layers back in the model."""
        if self.merged:
            return
        for name, layer in self._layers.items():
            layer.merge()
            parent, attr = _parent(self.model, name)
            setattr(parent, attr, layer.base_layer)
        self.merged = True

    def unmerge(self) -> None:
        """Undo merge(): subtract the updates and re-insert the adapter layers."""
        if not self.merged:
            return
        for name, layer in self._layers.items():
            parent, attr = _parent(self.model, name)
            setattr(parent, attr, layer)
            layer.unmerge()
        self.merged = False

    def _require_unmerged(self, verb: str) -> None:
        if self.merged:
            raise RuntimeError(f"{verb}: the adapters are merged; call tuner.unmerge() first")

    def _device(self) -> torch.device:
        return next(iter(self._layers.values())).dora_A.device


def inject(model: nn.Module, config: DoraConfig) -> DoraTuner:
    """Wrap the target layers of ``model`` in place, freeze everything else but the heads."""
    if any(isinstance(m, DoraLayer) for m in model.modules()):
        raise ValueError("inject: the model already has DoRA layers; inject once per model")
    targets = find_targets(model, config.target_modules)
    heads = find_heads(model, config.modules_to_save)
    for name in targets:
        head = next((h for h in heads if name == h or name.startswith(h + ".")), None)
        if head is not None:
            raise ValueError(
                f"modules_to_save: {head!r} is trained fully but {name!r} is also a DoRA target; "
                "drop it from one of the two lists"
            )
    for param in model.parameters():
        param.requires_grad_(False)
    layers: dict[str, DoraLayer] = {}
    for name in targets:
        parent, attr = _parent(model, name)
        layer = DoraLayer(getattr(parent, attr), config.init_rank, config.alpha, config.dropout)
        setattr(parent, attr, layer)
        layers[name] = layer
    for head in heads:
        for param in model.get_submodule(head).parameters():
            param.requires_grad_(True)
    return DoraTuner(model, config, layers, heads)
