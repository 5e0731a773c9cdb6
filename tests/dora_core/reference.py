"""Independent reference computations the tests compare the library against."""

from __future__ import annotations

import torch


def naive_importance(A, B, c):
    """Eq. 7 by definition: materialise every c_i b_i a_i^T and their sum (float64)."""
    A, B, c = A.double(), B.double(), c.double()
    parts = [c[i] * torch.outer(B[:, i], A[i]) for i in range(A.shape[0])]
    total = torch.linalg.matrix_norm(sum(parts))
    if total == 0:
        return torch.zeros(A.shape[0], dtype=torch.float64)
    return torch.stack([torch.linalg.matrix_norm(p) for p in parts]) / total


def cubic_budget(t, t_i, t_end, b0, bT):
    """Eq. 9 as corrected in DESIGN.md, with explicit phase boundaries."""
    xi = min(max((t - t_i) / (t_end - t_i), 0.0), 1.0)
    return bT + (b0 - bT) * (1 - xi**3)


def top_k_lowest_index(scores: list[float], k: int) -> list[bool]:
    """Keep the k highest scores; among equal scores the lower index first."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = set(order[:k])
    return [i in kept for i in range(len(scores))]
