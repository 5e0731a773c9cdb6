"""Component importance (Eq. 7) in closed form, and its smoothing (Eq. 8).

The importance of component i of one layer is its share of the layer's update,

    s_i = || c_i b_i a_i^T ||_F / || sum_j c_j b_j a_j^T ||_F,

and neither norm needs a d_out x d_in matrix: a rank-1 matrix has norm
|c_i| ||a_i|| ||b_i||, and ||B diag(c) A||_F^2 = c^T ((B^T B) o (A A^T)) c.
The cost is O(r^2 (d_in + d_out)) instead of the O(r d_in d_out) memory and
time of materialising every component (what the released code does).
"""

from __future__ import annotations

import torch
from torch import Tensor


def component_importance(A: Tensor, B: Tensor, c: Tensor) -> Tensor:
    """Scores s_i (length r) of one layer's components; zeros when the update is zero.

    A: (r, d_in), B: (d_out, r), c: (r,). Leading batch dimensions are allowed
    (A: (..., r, d_in) etc.) to score many same-shaped layers in a few ops.
    The scale alpha / r' cancels in the ratio. Computed in at least float32
    and without autograd history.
    """
    with torch.no_grad():
        dtype = torch.promote_types(A.dtype, torch.float32)
        A, B, c = A.to(dtype), B.to(dtype), c.to(dtype)
        numerator = c.abs() * A.norm(dim=-1) * B.norm(dim=-2)
        gram = (B.mT @ B) * (A @ A.mT)  # (..., r, r)
        squared = (c.unsqueeze(-2) @ gram @ c.unsqueeze(-1)).squeeze(-1)  # (..., 1)
        denominator = squared.clamp_min(0).sqrt()
        # torch.where instead of an `if`: no host sync per layer on accelerators.
        return torch.where(denominator > 0, numerator / denominator, torch.zeros_like(numerator))


def ema_update(smoothed: Tensor, scores: Tensor, beta: float) -> Tensor:
    """s~(t) = beta * s~(t-1) + (1 - beta) * s(t), in place on ``smoothed``."""
    return smoothed.mul_(beta).add_(scores.to(smoothed.dtype), alpha=1.0 - beta)
