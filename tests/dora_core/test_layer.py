"""DoraLayer forward and delta_weight against W0 x + s B diag(c g) A x, for Linear and Conv1D."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from dora_core.layer import DoraLayer


def reference(layer: DoraLayer, x: torch.Tensor) -> torch.Tensor:
    W = layer.base_layer.weight.double()
    W = W.T if isinstance(layer.base_layer, Conv1D) else W  # (d_out, d_in)
    A, B = layer.dora_A.double(), layer.dora_B.double()
    g = layer.dora_c.double() * layer.gate.double() * (8.0 / 6)
    return x.double() @ (W + B @ torch.diag(g) @ A).T + layer.base_layer.bias.double()


@pytest.mark.parametrize("base", [nn.Linear(10, 7), Conv1D(7, 10)], ids=["linear", "conv1d"])
@pytest.mark.parametrize("frozen", [False, True])
def test_forward_and_delta_weight(base, frozen):
    torch.manual_seed(0)
    layer = DoraLayer(base, init_rank=6, alpha=8.0, dropout=0.5).eval()
    assert layer.shape == (7, 10)
    with torch.no_grad():
        layer.dora_c.copy_(torch.randn(6))
    if frozen:
        layer.prune(torch.tensor([True, False, True, True, False, True]))
        layer.freeze()
        assert layer.gated and layer.gate.tolist() == [1, 0, 1, 1, 0, 1]
    x = torch.randn(3, 4, 10)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), reference(layer, x), rtol=1e-5, atol=1e-6)
        delta = layer.delta_weight()
        assert delta.shape == base.weight.shape
        merged = base.weight + delta
        layer.merge()
        torch.testing.assert_close(base.weight, merged)
        torch.testing.assert_close(layer(x), base(x))  # merged: the base alone


def test_mixed_precision_base_output():
    torch.manual_seed(1)
    layer = DoraLayer(nn.Linear(8, 5), 6, 8.0, 0.0)
    with torch.no_grad():
        layer.dora_c.copy_(torch.randn(6))
    layer.base_layer.to(torch.bfloat16)
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    want = reference(layer, x.float())
    torch.testing.assert_close(out.double(), want, rtol=2e-2, atol=2e-2)


def test_rows_compacted_to_zero_still_run():
    layer = DoraLayer(nn.Linear(8, 5), 4, 8.0, 0.0)
    layer.prune(torch.zeros(4, dtype=torch.bool))
    layer.freeze()
    layer.compact_rows(layer.gate.nonzero().flatten())
    assert layer.rank == 0 and not layer.gated
    x = torch.randn(3, 8)
    out = layer(x)
    torch.testing.assert_close(out, layer.base_layer(x))
    out.sum().backward()  # every parameter takes part in the graph (DDP needs that)
    assert layer.dora_A.grad is not None and layer.dora_A.grad.shape == (0, 8)
