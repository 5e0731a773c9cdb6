"""Global exact-count selection of the components that stay live."""

from __future__ import annotations

import torch
from torch import Tensor


def select_top(scores: Tensor, keep: int) -> Tensor:
    """Boolean mask keeping exactly ``keep`` entries with the highest scores.

    Ties are broken by position: among equal scores the lower index stays.
    Pruning "everything <= the k-th score" would over-prune on ties, so we
    never compare against a threshold. NaN scores rank last.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    if not 0 <= keep <= scores.numel():
        raise ValueError(f"keep must be in [0, {scores.numel()}], got {keep}")
    values = torch.nan_to_num(scores.detach().cpu().double(), nan=-torch.inf)
    order = torch.argsort(values, descending=True, stable=True)
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[:keep]] = True
    return mask.to(scores.device)
