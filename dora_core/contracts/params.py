"""Parameters of an adapter's live components, from module shapes.

A rank-1 component of a module whose weight is [d_out, d_in] holds a row of
A (d_in values) and a column of B (d_out values); gated methods (DoRA's gate
c, AdaLoRA's singular value E) add one scalar per component, plain LoRA has
none. The study (``bench.study``) and the dashboard (``dashboard.params``)
count live adapter parameters with these. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def component_size(shape: Sequence[int], gated: bool) -> int:
    """Parameters of one rank-1 component of a module with weight shape [d_out, d_in]."""
    return shape[0] + shape[-1] + (1 if gated else 0)


def live_params(modules: Iterable[tuple[int, Sequence[int]]], gated: bool) -> int:
    """Sum over modules of (live components) x (component size); ``modules`` holds one
    (live, weight shape) pair per adapted module: r x (d_in + d_out + 1) per module for
    gated methods, r x (d_in + d_out) for plain LoRA."""
    return sum(live * component_size(shape, gated) for live, shape in modules)
