"""Eq. 7 in closed form equals the per-component definition; no d_out x d_in tensor."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dora_core import component_importance
from dora_core.importance import ema_update
from tests.dora_core.reference import naive_importance


@pytest.mark.parametrize(("r", "d_in", "d_out"), [(1, 5, 7), (12, 64, 48), (6, 48, 200)])
def test_closed_form_equals_definition(r, d_in, d_out):
    gen = torch.Generator().manual_seed(r * 1000 + d_in)
    A = torch.randn(r, d_in, generator=gen)
    B = torch.randn(d_out, r, generator=gen)
    c = torch.randn(r, generator=gen)
    if r > 1:
        c[0] = 0.0  # a pruned component scores zero
    got = component_importance(A, B, c)
    assert got.shape == (r,)
    torch.testing.assert_close(got.double(), naive_importance(A, B, c), rtol=1e-4, atol=1e-6)


def test_correlated_components_score_above_one():
    # Two components that cancel: each alone is larger than the sum.
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    c = torch.tensor([1.0, -0.9])
    torch.testing.assert_close(component_importance(a, b, c).double(), naive_importance(a, b, c))
    assert (component_importance(a, b, c) > 1).all()


def test_zero_update_scores_zero_not_nan():
    A, B = torch.randn(4, 8), torch.randn(6, 4)
    assert torch.equal(component_importance(A, B, torch.zeros(4)), torch.zeros(4))


def test_bfloat16_inputs_are_scored_in_float32():
    A, B, c = torch.randn(4, 32), torch.randn(16, 4), torch.randn(4)
    got = component_importance(A.bfloat16(), B.bfloat16(), c.bfloat16())
    assert got.dtype == torch.float32
    want = naive_importance(A.bfloat16().float(), B.bfloat16().float(), c.bfloat16().float())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_allocates_a_weight_sized_tensor():
    r, d_in, d_out = 12, 768, 3072
    A, B, c = torch.randn(r, d_in), torch.randn(d_out, r), torch.randn(r)
    with _LargestTensor() as probe:
        component_importance(A, B, c)
    # The inputs are the largest things around; nothing near d_out * d_in.
    assert probe.largest <= max(A.numel(), B.numel())
    assert probe.largest < d_out * d_in // 10


def test_ema_starts_from_zero_and_follows_eq8():
    smoothed = torch.zeros(3)
    ema_update(smoothed, torch.tensor([1.0, 2.0, 0.0]), beta=0.9)
    torch.testing.assert_close(smoothed, torch.tensor([0.1, 0.2, 0.0]))
    ema_update(smoothed, torch.tensor([1.0, 0.0, 1.0]), beta=0.9)
    torch.testing.assert_close(smoothed, torch.tensor([0.19, 0.18, 0.1]))


def test_batched_layers_score_like_one_at_a_time():
    gen = torch.Generator().manual_seed(3)
    A, B, c = (
        torch.randn(5, 4, 16, generator=gen),
        torch.randn(5, 24, 4, generator=gen),
        torch.randn(5, 4, generator=gen),
    )
    c[2] = 0.0  # one layer with a zero update
    got = component_importance(A, B, c)
    assert got.shape == (5, 4)
    for i in range(5):
        torch.testing.assert_close(
            got[i].double(), naive_importance(A[i], B[i], c[i]), rtol=1e-4, atol=1e-6
        )
