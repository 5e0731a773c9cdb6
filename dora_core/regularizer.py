"""The DEM regulariser (Eq. 10): keep each component's factors flat.

    R = (1/n) sum_i (Var(a_i) + Var(b_i))

with the unbiased variance over the entries of a_i (a row of A) and b_i (a
column of B), and n the number of components, pruned ones included (the
paper's 1/n; the released code divides by 2n). After the mask is frozen only
live rows enter the sum, so pruned components receive nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from dora_core.layer import DoraLayer


def component_variances(A: Tensor, B: Tensor) -> Tensor:
    """Var(a_i) + Var(b_i) per component (unbiased); A: (r, d_in), B: (d_out, r)."""
    return A.var(dim=1, unbiased=True) + B.var(dim=0, unbiased=True)


def dem_penalty(layers: Iterable[DoraLayer]) -> Tensor:
    """R over the given adapter layers (differentiable w.r.t. A and B)."""
    layers = list(layers)
    if not layers:
        raise ValueError("dem_penalty: no adapter layers given")
    n = sum(layer.init_rank for layer in layers)
    total = None
    for layer in layers:
        if layer.rank == 0:
            continue
        term = (component_variances(layer.dora_A, layer.dora_B) * layer.gate).sum()
        total = term if total is None else total + term.to(total.device)
    if total is None:
        return torch.zeros((), device=layers[0].dora_A.device)
    return total / n
