"""DEM (Eq. 10): (1/n) sum_i (Var(a_i) + Var(b_i)), unbiased, n includes pruned."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dora_core import dem_penalty
from dora_core.layer import DoraLayer


def unbiased_var(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def naive_dem(layers):
    total, n = 0.0, 0
    for layer in layers:
        A, B = layer.dora_A.tolist(), layer.dora_B.T.tolist()
        n += layer.init_rank
        total += sum(unbiased_var(a) + unbiased_var(b) for a, b in zip(A, B, strict=True))
    return total / n


def test_matches_the_definition_and_has_gradients():
    torch.manual_seed(0)
    layers = [DoraLayer(nn.Linear(7, 5), 4, 8.0, 0.0), DoraLayer(nn.Linear(3, 9), 4, 8.0, 0.0)]
    got = dem_penalty(layers)
    assert got.item() == pytest.approx(naive_dem(layers), rel=1e-5)
    got.backward()
    assert layers[0].dora_A.grad is not None and layers[1].dora_B.grad.abs().sum() > 0


def test_frozen_pruned_rows_leave_the_sum_but_not_n():
    torch.manual_seed(1)
    layer = DoraLayer(nn.Linear(6, 6), 4, 8.0, 0.0)
    layer.prune(torch.tensor([True, False, True, False]))
    layer.freeze()
    A, B = layer.dora_A.tolist(), layer.dora_B.T.tolist()
    want = sum(unbiased_var(A[i]) + unbiased_var(B[i]) for i in (0, 2)) / 4
    got = dem_penalty([layer])
    assert got.item() == pytest.approx(want, rel=1e-5)
    got.backward()
    assert layer.dora_A.grad[[1, 3]].abs().sum() == 0


def test_empty_is_an_error():
    with pytest.raises(ValueError, match="no adapter layers"):
        dem_penalty([])
