"""The grid's outcome: status, seeds finished per cell, dev accuracy and macro-F1 (mean ± std
over seeds, with the average over datasets), and the reading of the accuracy table: the
paper's headline claim against our averages, then DoRA against the best baseline per cell."""

from __future__ import annotations

from typing import Any

from bench.report.common import METHOD_NAMES, GridResults, fmt
from bench.report.stuck import did_not_learn
from bench.study_grid import Grid, group, mean_std, search_cells

# The paper's Table 2 (GLUE averages, RoBERTa-base), for the verdict.
PAPER_AVERAGE = {
    2: {"dora": 86.38, "lora": 85.50, "adalora": 85.93},
    8: {"dora": 86.97, "lora": 86.13, "adalora": 86.38},
}


def section(results: GridResults) -> list[str]:
    grid, cells, search = results.grid, results.cells, results.search
    verdict = headline_verdict(cells, grid)
    wins = wins_reading(cells, grid, complete=len(cells) == results.expected_cells)
    return [
        f"**Status:** {len(cells)} of {results.expected_cells} grid cells and {len(search)} of "
        f"{len(search_cells(grid))} search cells finished; {sessions_line(results.sessions)}.",
        "",
        "Seeds finished per cell:",
        "",
        progress_table(cells, grid),
        "",
        "### Dev accuracy (%), mean ± std over seeds",
        "",
        metric_table(cells, grid, "accuracy"),
        "",
        "### Dev macro-F1 (%), mean ± std over seeds",
        "",
        metric_table(cells, grid, "macro_f1"),
        "",
        "The average row is filled in once every cell of that column has all its seeds.",
        "",
        "### Reading: accuracy",
        "",
        *verdict,
        *([""] if verdict else []),
        *(wins or ["No comparable cells yet."]),
        "",
    ]


def sessions_line(sessions: list[dict[str, Any]]) -> str:
    """How many sessions ran, when, and how many cells they trained in how long."""
    if not sessions:
        return "not run yet"
    wall = sum(s["wall_s"] for s in sessions)
    run = sum(s["cells_run"] for s in sessions)
    first, last = sessions[0]["started"][:10], sessions[-1]["started"][:10]
    when = first if first == last else f"{first} to {last}"
    return f"{len(sessions)} session(s), {when}, {run} cells trained in {wall / 3600:.2f} h wall time (--jobs {sessions[-1]['jobs']}, {sessions[-1]['threads']} torch thread(s) per cell)"


def progress_table(records: list[dict[str, Any]], grid: Grid) -> str:
    """Seeds finished per cell, so a partial study says exactly what is in the tables."""
    counts = {k: len(v) for k, v in group(records, "dataset", "budget", "method")}
    header = ["dataset", *[f"b(T)={b} {m}" for b in grid.budgets for m in grid.methods]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for plan in grid.datasets:
        row = [plan.name]
        for b in grid.budgets:
            for m in grid.methods:
                row.append(f"{counts.get((plan.name, b, m), 0)}/{len(grid.seeds)}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def summary(
    records: list[dict[str, Any]], metric: str
) -> dict[tuple[str, int, str], tuple[float, float, int]]:
    """(dataset, budget, method) -> (mean, std, n) of ``metric`` over seeds."""
    return {
        key: (*mean_std([r[metric] for r in recs]), len(recs))
        for key, recs in group(records, "dataset", "budget", "method")
    }


def metric_table(
    records: list[dict[str, Any]], grid: Grid, metric: str, with_average: bool = True
) -> str:
    """Datasets (rows) x b(T) x method (columns), mean ± std over seeds, best mean in bold."""
    stats = summary(records, metric)
    header = [
        "dataset",
        *[f"b(T)={b} {METHOD_NAMES[m]}" for b in grid.budgets for m in grid.methods],
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [p.name for p in grid.datasets]
    for dataset in rows:
        cells = []
        for b in grid.budgets:
            means = {m: stats[(dataset, b, m)][0] for m in grid.methods if (dataset, b, m) in stats}
            top = max(means.values()) if means else None
            for m in grid.methods:
                if (dataset, b, m) not in stats:
                    cells.append("–")
                    continue
                mean, std, n = stats[(dataset, b, m)]
                text = fmt(mean, std, n)
                cells.append(f"**{text}**" if len(means) > 1 and mean == top else text)
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    if with_average:
        avg = averages(records, grid, metric)
        cells = [
            "–" if avg[(b, m)] is None else f"{avg[(b, m)] * 100:.2f}"
            for b in grid.budgets
            for m in grid.methods
        ]
        lines.append("| **average** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def averages(
    records: list[dict[str, Any]], grid: Grid, metric: str
) -> dict[tuple[int, str], float | None]:
    """(budget, method) -> the mean over datasets of the per-dataset means; None until
    every dataset has all its seeds for that column (a partial mean would mislead)."""
    stats = summary(records, metric)
    rows = [p.name for p in grid.datasets]
    out: dict[tuple[int, str], float | None] = {}
    for b in grid.budgets:
        for m in grid.methods:
            values = [stats[(d, b, m)] for d in rows if (d, b, m) in stats]
            complete = len(values) == len(rows) and all(v[2] == len(grid.seeds) for v in values)
            out[(b, m)] = sum(v[0] for v in values) / len(rows) if complete else None
    return out


def headline_verdict(records: list[dict[str, Any]], grid: Grid) -> list[str]:
    """The paper's headline claim against the finished grid: each budget's methods ranked
    by their average dev accuracy over the datasets, next to the paper's GLUE averages."""
    avg = averages(records, grid, "accuracy")
    if any(v is None for v in avg.values()):
        return []
    lines = []
    dora_first = 0
    for b in grid.budgets:
        ranked = sorted(grid.methods, key=lambda m: -avg[(b, m)])
        dora_first += all(avg[(b, "dora")] > avg[(b, m)] for m in grid.methods if m != "dora")
        ours = ", ".join(f"{METHOD_NAMES[m]} {avg[(b, m)] * 100:.2f}" for m in ranked)
        paper = PAPER_AVERAGE.get(b)
        theirs = (
            " (paper, GLUE: "
            + ", ".join(
                f"{METHOD_NAMES[m].split(' (')[0]} {paper[m]:.2f}"
                for m in sorted(paper, key=lambda m: -paper[m])
            )
            + ")"
            if paper
            else ""
        )
        lines.append(f"- b(T)={b}: {ours}{theirs}.")
    held = (
        "reproduced"
        if dora_first == len(grid.budgets)
        else "reproduced at some budgets only"
        if dora_first
        else "not reproduced"
    )
    head = (
        f"**Verdict:** the paper's headline (DoRA has the best average at every budget) is "
        f"**{held}** here (a tie is not a win). Average dev accuracy over the "
        f"{len(grid.datasets)} dataset{'s' if len(grid.datasets) != 1 else ''}, best first:"
    )
    return [head, "", *lines]


def wins_reading(records: list[dict[str, Any]], grid: Grid, complete: bool = False) -> list[str]:
    """Per dataset and budget: DoRA's mean accuracy against the best baseline's, and whether
    the gap is larger than the seeds' spread (the larger of the two stds)."""
    stats = summary(records, "accuracy")
    lines, wins, total = [], 0, 0
    for plan in grid.datasets:
        for b in grid.budgets:
            if (plan.name, b, "dora") not in stats:
                continue
            baselines = [
                (m, stats[(plan.name, b, m)])
                for m in grid.methods
                if m != "dora" and (plan.name, b, m) in stats
            ]
            if not baselines:
                continue
            total += 1
            dora = stats[(plan.name, b, "dora")]
            best_m, best = max(baselines, key=lambda kv: kv[1][0])
            gap = (dora[0] - best[0]) * 100
            spread = max(dora[1], best[1]) * 100
            n = min(dora[2], best[2])
            if gap > 0:
                wins += 1
            verdict = "DoRA ahead" if gap > 0 else "DoRA behind" if gap < 0 else "a tie"
            if n < 2:
                verdict += (
                    " (one seed: no spread)" if complete else " (one seed so far: no spread yet)"
                )
            elif gap:
                verdict += (
                    ", within the seed spread" if abs(gap) <= spread else ", beyond the seed spread"
                )
            line = (
                f"- {plan.name}, b(T)={b}: DoRA {dora[0] * 100:.2f} vs best baseline "
                f"{METHOD_NAMES[best_m]} {best[0] * 100:.2f} → {gap:+.2f} points, {verdict}; "
                f"std {spread:.2f}, n={n}."
            )
            here = [r for r in records if r["dataset"] == plan.name and r["budget"] == b]
            if any(did_not_learn(r) for r in here):
                learned = summary([r for r in here if not did_not_learn(r)], "accuracy")
                means = [
                    f"{METHOD_NAMES[m]} {learned[(plan.name, b, m)][0] * 100:.2f} "
                    f"(n={learned[(plan.name, b, m)][2]})"
                    for m in grid.methods
                    if (plan.name, b, m) in learned
                ]
                line += " Without the runs that did not learn: " + ", ".join(means) + "."
            lines.append(line)
    if total:
        lines.insert(
            0,
            f"DoRA has the best mean dev accuracy in **{wins} of {total}** dataset × budget cells"
            + (":" if complete else " so far:"),
        )
    return lines
