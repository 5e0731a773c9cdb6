"""Where DoRA put the budget: one PNG per b(T) of the final live components per module (the
dashboard's own figure, ``dashboard.figures.compare_rank_heatmaps``, exported by kaleido,
which drives the system Chromium headless), then the comparison with the paper's Figure 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report.common import ROOT, TYPE_SHORT, GridResults
from bench.report.figure2 import figure2_table, type_profile
from bench.study_grid import Grid
from dashboard.plot import with_kaleido_retry
from dora_core.contracts.rankgrid import rank_grid


def section(results: GridResults) -> list[str]:
    """Draws ``<png_prefix>-rank-b<b(T)>.png`` in the results folder for every budget that has
    DoRA cells, and links them relative to docs/ when they are inside it."""
    profiles = {}
    heat = []
    for b in results.grid.budgets:
        png = results.results_dir / f"{results.png_prefix}-rank-b{b}.png"
        matrices = draw_heatmaps(results.cells, results.grid, b, png)
        profiles[b] = type_profile(matrices, b)
        if matrices:
            rel = png.relative_to(ROOT / "docs") if png.is_relative_to(ROOT / "docs") else png
            heat += [f"![DoRA final ranks, b(T)={b}]({rel})", ""]
    lines = ["### Where DoRA put the budget", ""]
    if not heat:
        return [*lines, "No DoRA cells yet.", ""]
    return [
        *lines,
        "Final live components per module (mean over the finished seeds; colour 0..r'; "
        "rows are layers 0-5, columns the six projections of each block). Drawn with the "
        "dashboard's `compare_rank_heatmaps` and exported by kaleido through the system "
        "Chromium.",
        "",
        *heat,
        *figure2_table(profiles),
        "",
    ]


def rank_matrix(records: list[dict[str, Any]], r_max: int) -> dict[str, Any] | None:
    """Mean final live components per (layer, module type) over the records (seeds), in the
    shape of the API's ``/rank-matrix`` answer, which ``dashboard.figures`` draws."""
    rows = [row for r in records if r.get("rank_pattern") for row in r["rank_pattern"]]
    if not rows:
        return None
    layers, types, live = rank_grid(
        ((row["layer"], row["type"], row["live"]) for row in rows),
        combine=lambda seeds: round(sum(seeds) / len(seeds), 1),
    )
    modules = rank_grid((row["layer"], row["type"], row["module"]) for row in rows).matrix
    return {
        "layers": layers,
        "types": [TYPE_SHORT.get(t, t) for t in types],
        "modules": modules,
        "live": live,
        "rank": [[r_max for _ in types] for _ in layers],
        "full_types": types,
    }


def draw_heatmaps(
    records: list[dict[str, Any]], grid: Grid, budget: int, path: Path
) -> dict[str, dict[str, Any]]:
    """One PNG per budget: the datasets side by side on one colour scale 0..r'. Returns the
    matrices drawn (dataset -> matrix)."""
    from dashboard.figures import compare_rank_heatmaps

    r_max = -(-3 * budget // 2)
    items = []
    matrices = {}
    for plan in grid.datasets:
        recs = [
            r
            for r in records
            if r["method"] == "dora" and r["budget"] == budget and r["dataset"] == plan.name
        ]
        matrix = rank_matrix(recs, r_max)
        if matrix is not None:
            matrices[plan.name] = matrix
            items.append((f"{plan.name} (n={len(recs)})", matrix))
    if not items:
        return matrices
    fig = compare_rank_heatmaps(items, r_max=r_max)
    fig.update_layout(
        title={
            "text": f"DoRA: final live components per module<br>b(T)={budget}, r'={r_max}, mean over seeds",
            "x": 0.01,
        },
        margin={"t": 110},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    width = max(640, 420 * len(items) + 120)
    with_kaleido_retry(
        lambda: fig.write_image(str(path), width=width, height=fig.layout.height + 60, scale=1)
    )
    return matrices
