"""Mixed precision for one run: the dtype forward passes autocast to, and fp16's scaler.

The job's ``precision`` is resolved once against the run's device
(``resolve_precision``): ``auto`` is bf16 on a CUDA device that supports it
and fp32 everywhere else; fp16 is refused off CUDA (torch runs it on a CPU,
but emulated: slower than fp32, and no memory saved since the CPU base stays
fp32); bf16 on a GPU needs the GPU's support; mps trains in fp32 (its
autocast is untested here).

Only forward passes run under autocast: the training forward and loss, the
dev evaluation and generation. The backward pass, the regulariser, the
optimizer step and the method's step (EMA, pruning) do not. What trains
stays fp32: adapter factors (``DoraLayer`` makes them at least fp32; PEFT
upcasts its own), the task head (``keep_trainable_fp32``), AdamW's state
(kept in its parameter's dtype) and the importance maths
(``component_importance`` computes in at least fp32), so the exported
adapter is fp32 whatever the precision. Only the frozen base may be loaded
in the low dtype, and only on CUDA (``base_dtype``), where it halves the
memory the weights take; on CPU, bf16 autocast casts fp32 weights per op.

fp16's narrow range needs loss scaling: ``torch.amp.GradScaler`` scales the
loss before the backward pass, unscales the gradients before they are
clipped, and skips an optimizer step whose gradients overflowed (the
method's step still runs, so the schedule keeps counting optimizer steps).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from dora_core.contracts.job import FP16_ON_CPU, LOW_PRECISION_ON_MPS, JobConfigError
from dora_core.contracts.wire import METHODS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _bf16_on_cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(requested: str, device_type: str) -> str:
    """fp32 / bf16 / fp16 for a job's ``precision`` on ``device_type``; JobConfigError if
    that device cannot run it."""
    if requested == "auto":
        return "bf16" if device_type == "cuda" and _bf16_on_cuda() else "fp32"
    if requested == "fp32":
        return requested
    if device_type == "mps":
        raise JobConfigError([("precision", LOW_PRECISION_ON_MPS.format(precision=requested))])
    if requested == "fp16" and device_type != "cuda":
        raise JobConfigError([("precision", FP16_ON_CPU)])
    if requested == "bf16" and device_type == "cuda" and not _bf16_on_cuda():
        raise JobConfigError([("precision", "this GPU does not support bf16; use fp16 or fp32")])
    return requested


def base_dtype(precision: str, device_type: str, method: str) -> torch.dtype | None:
    """The dtype to load the frozen base in: the autocast dtype on CUDA when the method
    trains adapters (a full fine-tune keeps fp32 master weights); None: as stored (fp32)."""
    if precision == "fp32" or device_type != "cuda" or not METHODS[method].adapter:
        return None
    return DTYPES[precision]


def keep_trainable_fp32(model: nn.Module) -> None:
    """Every trainable parameter in fp32 (a head made next to a bf16 base is bf16), so the
    optimizer, its state and the saved adapter are full precision."""
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()


class Amp:
    """Autocast and (fp16) loss scaling for one run; a no-op for fp32."""

    def __init__(self, precision: str, device: torch.device):
        self.precision = precision
        self.device_type = device.type
        self.dtype = DTYPES[precision]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context every forward pass runs in."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """True gradients before the clip (fp16: divide the loss scale out)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skipped when the gradients overflowed
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
