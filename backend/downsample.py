"""Choosing which recorded steps to send when a series has more than ``max_points``.

Steps that must survive (pruning events, the first and the last step) are
kept; the rest of the budget is spread evenly over the other steps, so a
plot keeps its shape and every drop in rank stays visible.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def _evenly(items: Sequence[int], count: int) -> list[int]:
    """``count`` items spread evenly over ``items`` (first and last included when count >= 2)."""
    if count <= 0 or not items:
        return []
    if count >= len(items):
        return list(items)
    if count == 1:
        return [items[-1]]
    idx = np.unique(np.linspace(0, len(items) - 1, count).round().astype(np.int64))
    return [items[i] for i in idx]


def pick_steps(steps: Sequence[int], max_points: int, keep: Iterable[int] = ()) -> list[int]:
    """At most ``max_points`` of the sorted ``steps``: all of ``keep`` that fit, then evenly.

    ``keep`` steps that are not in ``steps`` are ignored. When the kept steps
    alone exceed ``max_points`` they are themselves thinned evenly (the last
    step of the series always stays).
    """
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    if len(steps) <= max_points:
        return list(steps)
    present = set(steps)
    must = sorted({steps[0], steps[-1], *(s for s in keep if s in present)})
    if len(must) >= max_points:
        return _evenly(must, max_points)  # keeps the last step: it is must[-1]
    # The rest of the budget goes to evenly spaced positions over the whole series
    # (its ends are already in ``must``); one landing on a kept step is not replaced.
    spare = max_points - len(must)
    positions = np.linspace(0, len(steps) - 1, spare + 2)[1:-1].round().astype(np.int64)
    return sorted(set(must).union(steps[i] for i in positions))
