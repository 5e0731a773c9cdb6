"""Ship a trained DoRA adapter as a standard PEFT LoRA adapter with uneven ranks.

Each layer's update s * B diag(c * g) A keeps only the components whose
effective gate s * c_i * g_i is non-zero (the others contribute exactly
nothing), and the gate is folded into B. PEFT then needs scaling 1 per
module: ``alpha_pattern[name] = rank_pattern[name]``. Layers left with no
component are not targeted at all. Written without importing peft; the
format is ``adapter_config.json`` + ``adapter_model.safetensors`` with keys
``base_model.model.<module>.lora_A.weight`` (r x d_in) and ``lora_B.weight``
(d_out x r), the same for GPT-2 Conv1D layers (PEFT transposes itself when
``fan_in_fan_out`` is true).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from dora_core.layer import DoraLayer

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _full(tensor: Tensor) -> Tensor:
    """Half-precision tensors as fp32: an adapter ships in full precision whatever the
    training's (a head trained next to a bf16 base, say)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


@torch.no_grad()
def lora_factors(layer: DoraLayer) -> tuple[Tensor, Tensor]:
    """(A', B') with B' A' equal to the layer's update, keeping only non-zero gates."""
    gate = layer.effective_gate()
    rows = (gate != 0).nonzero().flatten()
    A = layer.dora_A.index_select(0, rows)
    B = layer.dora_B.index_select(1, rows) * gate.index_select(0, rows)
    return A.contiguous(), B.contiguous()


def export_peft(
    model: nn.Module,
    layers: dict[str, DoraLayer],
    heads: list[str],
    directory: str | Path,
    *,
    dropout: float = 0.0,
    task_type: str | None = None,
) -> Path:
    """Write the PEFT adapter folder; returns its path. ``task_type`` is PEFT's name for
    the model class to wrap (SEQ_CLS, CAUSAL_LM, SEQ_2_SEQ_LM; None: the plain model)."""
    tensors: dict[str, Tensor] = {}
    ranks: dict[str, int] = {}
    fan_in_fan_out = False
    for name, layer in layers.items():
        if layer.merged:
            raise ValueError("export_peft: the adapters are merged into the base; unmerge() first")
        A, B = lora_factors(layer)
        if A.shape[0] == 0:
            continue
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = _full(A.cpu())
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = _full(B.cpu())
        ranks[name] = A.shape[0]
        fan_in_fan_out |= layer.fan_in_fan_out
    if not ranks:
        raise ValueError(
            "export_peft: every component's gate c is zero, so the adapter is the identity; "
            "train before exporting"
        )
    for head in heads:
        for pname, param in model.get_submodule(head).named_parameters():
            tensors[f"{_PREFIX}{head}.{pname}"] = _full(param.detach().cpu().contiguous().clone())
    top = max(ranks.values())
    name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": name_or_path,
        "r": top,
        "lora_alpha": top,
        "rank_pattern": ranks,
        "alpha_pattern": {name: rank for name, rank in ranks.items()},
        "target_modules": sorted(ranks),
        "lora_dropout": dropout,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "modules_to_save": list(heads) or None,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,  # PEFT's use_dora is a different method (Liu et al. 2024)
        "inference_mode": True,
    }
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
