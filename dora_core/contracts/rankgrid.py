"""The layers x module-types grid of a rank pattern, from self-describing rows.

The API's ``/rank-matrix`` answer (``backend.services.queries``) and the
study report's heatmaps (``bench.report.heatmaps``) both lay values out this
way: one row per transformer layer, ascending, one column per module type,
in the order the types first appear (the model's own order inside a block).
Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple


class RankGrid(NamedTuple):
    """``matrix[i][j]`` is the value of layer ``layers[i]`` and type ``types[j]`` (None where
    no row has that pair)."""

    layers: list[int]
    types: list[str]
    matrix: list[list[Any]]


def last(values: list[Any]) -> Any:
    """The default combine: a pair given twice keeps its last value."""
    return values[-1]


def rank_grid(
    rows: Iterable[tuple[int, str, Any]], combine: Callable[[list[Any]], Any] = last
) -> RankGrid:
    """Rows of (layer, module type, value) as a matrix: layers ascending, types in order of
    first appearance, each cell ``combine`` of the values given for its pair, in row order
    (for instance a mean over seeds)."""
    values: dict[tuple[int, str], list[Any]] = {}
    for layer, module_type, value in rows:
        values.setdefault((layer, module_type), []).append(value)
    layers = sorted({layer for layer, _ in values})
    types = list(dict.fromkeys(module_type for _, module_type in values))
    matrix = [
        [combine(values[(layer, t)]) if (layer, t) in values else None for t in types]
        for layer in layers
    ]
    return RankGrid(layers, types, matrix)
