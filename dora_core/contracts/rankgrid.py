"""The layers x module-types grid of a rank pattern, from self-describing rows.

The API's ``/rank-matrix`` answer (``backend.services.queries``), the
study report's heatmaps (``bench.report.heatmaps``), the worker's trackers and
``dora plot`` (``rank_matrix``, from a run directory) all lay values out this
way: one row per transformer layer, ascending, one column per module type,
in the order the types first appear (the model's own order inside a block).
Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
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


def rank_matrix(
    modules: Sequence[Mapping[str, Any]],
    masks: Mapping[str, Sequence[int]] | None,
    step: int | None = None,
) -> dict[str, Any]:
    """The API's ``/rank-matrix`` answer, from a run directory instead of the database.

    ``modules`` are the register's (name, layer, type, rank), ``masks`` one scores
    record's (live = the sum of a module's mask; None before any scores). Modules
    outside the blocks (layer None) are left out, as the API leaves them out.
    """
    blocks = [m for m in modules if m.get("layer") is not None]

    def live(module: Mapping[str, Any]) -> int | None:
        mask = masks.get(module["name"]) if masks is not None else None
        return int(sum(mask)) if mask is not None else None

    grid = rank_grid((m["layer"], m["type"], live(m)) for m in blocks)
    return {
        "step": step,
        "layers": grid.layers,
        "types": grid.types,
        "live": grid.matrix,
        "rank": rank_grid((m["layer"], m["type"], m["rank"]) for m in blocks).matrix,
        "modules": rank_grid((m["layer"], m["type"], m["name"]) for m in blocks).matrix,
    }
