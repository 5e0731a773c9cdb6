"""Compaction: once the mask is frozen, pruned components cost nothing.

The pruned rows of A, B and c are sliced out in place (``param.data`` is
replaced, the Parameter object stays), and every optimizer state tensor
shaped like its parameter (AdamW's exp_avg / exp_avg_sq, SGD momentum, ...)
is sliced the same way. Element-wise optimizers then continue exactly as if
the pruned rows had never existed, which is what an uncompacted run with the
frozen mask does to the live rows.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from dora_core.layer import DoraLayer


def unwrap_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers such as accelerate's AcceleratedOptimizer."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"compact: {type(optimizer).__name__} is not a torch.optim.Optimizer "
            "(nor wraps one in .optimizer)"
        )
    return optimizer


def _factor_dims(layer: DoraLayer) -> list[tuple[torch.nn.Parameter, int]]:
    """Each factor with the dimension that indexes components."""
    return [(layer.dora_A, 0), (layer.dora_B, 1), (layer.dora_c, 0)]


def _check_state(optimizer: torch.optim.Optimizer, param: Tensor) -> None:
    for key, value in optimizer.state.get(param, {}).items():
        if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
            raise ValueError(
                f"compact: cannot slice {type(optimizer).__name__} state {key!r} of shape "
                f"{tuple(value.shape)} for a parameter of shape {tuple(param.shape)}; "
                "use an element-wise optimizer (AdamW, SGD) or DoraConfig(compact=False)"
            )


def compact_layers(layers: Iterable[DoraLayer], optimizer: object | None = None) -> None:
    """Slice every layer down to its live rows (gate == 1), with the optimizer state."""
    layers = list(layers)
    opt = unwrap_optimizer(optimizer) if optimizer is not None else None
    if opt is not None:  # validate everything before changing anything
        for layer in layers:
            for param, _ in _factor_dims(layer):
                _check_state(opt, param)
    for layer in layers:
        rows = layer.gate.nonzero().flatten()
        if opt is not None:
            for param, dim in _factor_dims(layer):
                state = opt.state.get(param)
                if not state:
                    continue
                for key, value in state.items():
                    if torch.is_tensor(value) and value.dim() > 0:
                        state[key] = value.index_select(dim, rows.to(value.device)).contiguous()
        layer.compact_rows(rows)
