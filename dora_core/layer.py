"""DoraLayer: a frozen linear layer plus r' gated rank-1 components.

    y = W0 x + s * B diag(c * g) A dropout(x),    s = alpha / r'

``g`` (the gate) is all ones while pruning is soft (pruning only zeroes c) and
becomes the frozen mask at T - t_f. Compaction then slices the pruned rows
out of A, B, c in place, so the Parameter objects (and every reference to
them: optimizers, cached parameter lists) stay the same; ``index`` records
which of the r' original components each remaining row is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


def layer_shape(base: nn.Module) -> tuple[int, int]:
    """(d_out, d_in) of an nn.Linear or a GPT-2 Conv1D (whose weight is d_in x d_out)."""
    if isinstance(base, Conv1D):
        d_in, d_out = base.weight.shape
        return d_out, d_in
    if isinstance(base, nn.Linear):
        return base.out_features, base.in_features
    raise TypeError(f"DoRA adapts nn.Linear and Conv1D layers, not {type(base).__name__}")


class DoraLayer(nn.Module):
    """Wraps ``base_layer`` (kept frozen) with dynamic-rank components."""

    def __init__(self, base_layer: nn.Module, init_rank: int, alpha: float, dropout: float):
        super().__init__()
        d_out, d_in = layer_shape(base_layer)
        self.base_layer = base_layer
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        self.init_rank = init_rank
        self.scaling = alpha / init_rank
        self.merged = False
        self.gated = False  # True while some current row has gate 0 (frozen, not compacted)
        weight = base_layer.weight
        # The factors train in at least fp32, also next to a bf16/fp16 base (mixed precision:
        # autocast lowers the matmuls, the weights and AdamW's state stay full precision).
        dtype = (
            torch.promote_types(weight.dtype, torch.float32)
            if weight.is_floating_point()
            else torch.float32
        )
        kwargs = {"device": weight.device, "dtype": dtype}
        self.dora_A = nn.Parameter(torch.empty(init_rank, d_in, **kwargs))
        self.dora_B = nn.Parameter(torch.empty(d_out, init_rank, **kwargs))
        self.dora_c = nn.Parameter(torch.zeros(init_rank, **kwargs))  # identity at init
        nn.init.kaiming_uniform_(self.dora_A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.dora_B, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Per current row: gate (1 live, 0 pruned after the freeze) and original component id.
        self.register_buffer("gate", torch.ones(init_rank, **kwargs), persistent=False)
        self.register_buffer(
            "index", torch.arange(init_rank, device=weight.device), persistent=False
        )
        # Per original component (length r' always): smoothed score and live mask.
        self.register_buffer("ema", torch.zeros(init_rank, device=weight.device), persistent=False)
        self.register_buffer(
            "mask", torch.ones(init_rank, dtype=torch.bool, device=weight.device), persistent=False
        )
        for p in self.base_layer.parameters():
            p.requires_grad_(False)

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the adapted weight."""
        return layer_shape(self.base_layer)

    @property
    def weight(self) -> Tensor:
        """The frozen base weight: model code that reads ``layer.weight`` (its dtype, say, as
        T5's feed-forward does) keeps working on an adapted layer."""
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    @property
    def rank(self) -> int:
        """Rows currently held: r' until compaction, the live count after."""
        return self.dora_A.shape[0]

    def effective_gate(self) -> Tensor:
        """s * c * g per current row: what multiplies each component in the forward."""
        gate = self.dora_c * self.scaling
        return gate * self.gate if self.gated else gate

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return out
        # A layer compacted to rank 0 still runs (on empty factors) so that DDP
        # sees every parameter used and needs no find_unused_parameters.
        x = self.dropout(x)
        if not torch.is_autocast_enabled(x.device.type):  # autocast picks the matmul's dtype
            x = x.to(self.dora_A.dtype)
        hidden = F.linear(x, self.dora_A)
        hidden = hidden * self.effective_gate()
        if out.dtype != hidden.dtype:
            return out + F.linear(hidden, self.dora_B).to(out.dtype)
        # out + hidden @ B^T in one fused call (saves a pass over the output).
        flat = out.reshape(-1, out.shape[-1])
        fused = torch.addmm(flat, hidden.reshape(flat.shape[0], self.rank), self.dora_B.T)
        return fused.view(out.shape)

    def delta_weight(self) -> Tensor:
        """The update s * B diag(c * g) A in the base weight's layout."""
        delta = self.dora_B @ (self.effective_gate()[:, None] * self.dora_A)
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight (idempotent)."""
        if not self.merged:
            weight = self.base_layer.weight
            weight.add_(self.delta_weight().to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again (idempotent)."""
        if self.merged:
            weight = self.base_layer.weight
            weight.sub_(self.delta_weight().to(weight.dtype))
            self.merged = False

    @torch.no_grad()
    def prune(self, keep: Tensor) -> None:
        """Soft pruning: record ``keep`` (length r') as the mask and zero c of the rest."""
        self.mask.copy_(keep)
        self.dora_c.masked_fill_(~keep[self.index], 0.0)

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix the mask: pruned rows contribute exactly zero and get zero gradient."""
        live = self.mask[self.index]
        self.gate.copy_(live.to(self.gate.dtype))
        self.dora_c.masked_fill_(~live, 0.0)
        self.refresh_gated()

    @torch.no_grad()
    def zero_gated(self) -> None:
        """Put c of gated-off rows back to 0. After the freeze their gradient is 0, but an
        optimizer with momentum (Adam) keeps moving them; the gate hides them from the
        forward, and this keeps what the tuner reports (factors, state, export) true."""
        if self.gated:
            self.dora_c.masked_fill_(self.gate == 0, 0.0)

    def refresh_gated(self) -> None:
        """Note whether the gate is needed in the forward (skipped while all ones)."""
        self.gated = bool((self.gate != 1).any())

    @torch.no_grad()
    def compact_rows(self, rows: Tensor) -> None:
        """Keep only current ``rows`` (ascending positions), in place on the same Parameters."""
        for param, dim in ((self.dora_A, 0), (self.dora_B, 1), (self.dora_c, 0)):
            kept = param.data.index_select(dim, rows).contiguous()
            # Autograd caches one AccumulateGrad node per parameter, with the old
            # shape, for as long as anything (a live loss graph, a DDP reducer)
            # holds it. Only a dtype change makes it forget that node, so pass
            # through another dtype before taking the new shape.
            other = torch.float64 if kept.dtype != torch.float64 else torch.float32
            param.data = torch.empty(0, dtype=other, device=kept.device)
            param.data = kept
            param.grad = None
        self.gate = self.gate.index_select(0, rows)
        self.index = self.index.index_select(0, rows)
        self.refresh_gated()

    def extra_repr(self) -> str:
        d_out, d_in = self.shape
        return f"d_in={d_in}, d_out={d_out}, rank={self.rank}/{self.init_rank}, scaling={self.scaling:g}"
