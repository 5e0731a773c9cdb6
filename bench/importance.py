"""Component importance (Eq. 7): closed form vs materialising every component.

The naive side does what the released DoRA code does each step: build the
r' x d_out x d_in stack of c_i b_i a_i^T per layer, take each slice's
Frobenius norm and the norm of their sum. Shapes are RoBERTa-base's 72
adapted layers (12 blocks x {4 of 768x768, 3072x768, 768x3072}), r' = 12.

Peak memory is the high-water mark of bytes held by tensors the computation
allocates (tracked per storage through a TorchDispatchMode; inputs excluded),
so it is exact for the tensors both methods create and independent of the
allocator. Time: interleaved repeats, medians, ratio of medians.

    .venv/bin/python bench/importance.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dora_core import component_importance

RANK = 12
HIDDEN, FFN, BLOCKS = 768, 3072, 12


def roberta_base_shapes() -> list[tuple[int, int]]:
    """(d_out, d_in) of every adapted layer."""
    block = [(HIDDEN, HIDDEN)] * 4 + [(FFN, HIDDEN), (HIDDEN, FFN)]
    return block * BLOCKS


def make_layers(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(RANK, d_in, generator=gen) / d_in**0.5,
            torch.randn(d_out, RANK, generator=gen) / RANK**0.5,
            torch.randn(RANK, generator=gen),
        )
        for d_out, d_in in roberta_base_shapes()
    ]


def naive_importance(A: torch.Tensor, B: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The released code's way: an r x d_out x d_in tensor of all components."""
    with torch.no_grad():
        components = c[:, None, None] * B.T[:, :, None] * A[:, None, :]
        per_component = components.flatten(1).norm(dim=1)
        return per_component / components.sum(dim=0).norm()


def closed_form_all(layers):
    """One call per layer: the public API as a user calls it."""
    return [component_importance(A, B, c) for A, B, c in layers]


def closed_form_batched(layers):
    """Same-shaped layers stacked into one call: how DoraTuner.step() scores them."""
    groups: dict[tuple, list[int]] = {}
    for i, (A, B, _) in enumerate(layers):
        groups.setdefault((A.shape, B.shape), []).append(i)
    scores: list[torch.Tensor] = [torch.empty(0)] * len(layers)
    for idx in groups.values():
        stacked = component_importance(
            torch.stack([layers[i][0] for i in idx]),
            torch.stack([layers[i][1] for i in idx]),
            torch.stack([layers[i][2] for i in idx]),
        )
        for i, s in zip(idx, stacked, strict=True):
            scores[i] = s
    return scores


def naive_all(layers):
    return [naive_importance(A, B, c) for A, B, c in layers]


class PeakTensorBytes(TorchDispatchMode):
    """High-water mark of bytes in storages created by ops run under this mode."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage ptr -> [nbytes, tensor refs]
        self.current = self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {
            a.untyped_storage().data_ptr()
            for a in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(a, torch.Tensor)
        }
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr in self.live:
                self.live[ptr][1] += 1
            elif ptr in inputs:
                continue  # a view of an input: allocates nothing
            else:
                self.live[ptr] = [t.untyped_storage().nbytes(), 1]
                self.current += self.live[ptr][0]
                self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, ptr)
        return out


def peak_bytes(fn, layers) -> int:
    with PeakTensorBytes() as probe:
        result = fn(layers)
    del result
    return probe.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = make_layers()
    print(
        f"RoBERTa-base shapes: {len(layers)} layers, r'={RANK}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    variants = {
        "closed form, per layer": closed_form_all,
        "closed form, batched": closed_form_batched,
        "naive (released code)": naive_all,
    }
    # Correctness against the definition in float64, one layer at a time.
    reference = [naive_importance(A.double(), B.double(), c.double()) for A, B, c in layers]
    for name, fn in variants.items():
        got = fn(layers)
        worst = max(
            float(((g.double() - r).abs() / r.abs().clamp_min(1e-3)).max())
            for g, r in zip(got, reference, strict=True)
        )
        print(f"same scores: {name:24} max relative error vs float64 definition {worst:.1e}")

    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in tqdm(range(args.repeats), desc="timing rounds"):
        for name, fn in variants.items():
            inner = 1 if fn is naive_all else 20  # the closed forms are fast
            start = time.perf_counter()
            for _ in range(inner):
                fn(layers)
            times[name].append((time.perf_counter() - start) / inner)
    medians = {name: statistics.median(values) for name, values in times.items()}
    peaks = {name: peak_bytes(fn, layers) for name, fn in variants.items()}

    naive = "naive (released code)"
    print(f"{'':24} {'time/step (median)':>19} {'peak tensor memory':>19} {'naive / this':>16}")
    for name in variants:
        print(
            f"{name:24} {medians[name] * 1e3:16.2f} ms {peaks[name] / 2**20:15.3f} MiB "
            f"{medians[naive] / medians[name]:7.0f}x time {peaks[naive] / peaks[name]:6.0f}x mem"
        )
    fast = "closed form, per layer"
    ok = medians[naive] / medians[fast] >= 100 and peaks[naive] / peaks[fast] >= 100
    print(
        "target (per-layer closed form >= 100x faster and >= 100x less memory):",
        "met" if ok else "MISSED",
    )


if __name__ == "__main__":
    main()
