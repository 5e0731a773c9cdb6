"""Study round 2 (bench/study_round2.py): one section per question, the paper's number
beside ours, a paired comparison across seeds and a one-sentence verdict computed from
the numbers (so a partial study reads as partial, never as a finding it has not reached).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.report.common import METHOD_NAMES, ROOT, fmt, load, titled
from bench.report.lrsearch import search_table
from bench.report.paired import Paired, compare
from bench.study_grid import FULL, METHODS, mean_std, select_lr
from bench.study_round2 import (
    BUDGETS,
    DATASETS,
    DEM_WEIGHTS,
    EDGE_LR,
    EPOCHS,
    HEAD_LR,
    INIT_FACTORS,
    QUESTIONS,
    ROUND2,
    lr_b2_search,
    question_cells,
)
from dashboard.plot import with_kaleido_retry

COMMAND = ".venv/bin/python bench/study.py --round2 --jobs 2"
# A run "did not learn" when its dev macro-F1 stays below 0.5: a constant prediction scores
# at most 0.47 on these sets (sms-spam's 87% majority), learned runs score 0.62 or more.
LEARNED_F1 = 0.5
Record = dict[str, Any]


# --- which records answer which question ------------------------------------------------------


def overrides(r: Record) -> dict[str, Any]:
    return r.get("overrides") or {}


def eta(r: Record) -> float:
    return float(overrides(r).get("dem_weight", 0.1))


def r0_factor(r: Record) -> float:
    """b(0) / b(T) of a DoRA record, as the planner's factors (1, 1.5, 2)."""
    return next(f for f in INIT_FACTORS if math.ceil(f * r["budget"]) == r["init_rank"])


def longer(r: Record) -> bool:
    return "max_steps" in overrides(r)


def only(r: Record, *allowed: str) -> bool:
    """The record sets no override outside ``allowed``."""
    return set(overrides(r)) <= set(allowed)


def pairs(
    records: list[Record],
    a: Callable[[Record], bool],
    b: Callable[[Record], bool],
    *,
    across_methods: bool = False,
) -> list[tuple[float, float]]:
    """(accuracy under a, accuracy under b) for every (dataset, b(T), method, seed) run both;
    ``across_methods`` pairs two methods' runs of the same (dataset, b(T), seed) instead."""

    def key(r: Record) -> tuple:
        method = () if across_methods else (r["method"],)
        return (r["dataset"], r["budget"], *method, r["seed"])

    left = {key(r): r["accuracy"] for r in records if a(r)}
    return [(left[key(r)], r["accuracy"]) for r in records if b(r) and key(r) in left]


def not_learned(records: Iterable[Record]) -> int:
    """How many of ``records`` did not learn (dev macro-F1 below LEARNED_F1)."""
    return sum(r["macro_f1"] < LEARNED_F1 for r in records)


def cell(records: Iterable[Record]) -> str:
    accs = [r["accuracy"] for r in records]
    return fmt(*mean_std(accs), len(accs))


def verdict(p: Paired | None, paper: str, what: str) -> str:
    """One sentence: what our pairs say about ``what``, next to the paper's number."""
    if p is None:
        return f"**Verdict:** no paired runs yet for {what}."
    if p.significant():
        direction = "helps" if p.mean_diff > 0 else "hurts"
        return f"**Verdict:** here {what} {direction}: {p.describe()}; the paper: {paper}."
    return (
        f"**Verdict:** here {what} makes no difference we can tell from seed noise: "
        f"{p.describe()}; the paper: {paper}."
    )


# --- the sections -----------------------------------------------------------------------------


def dora_ablation(cells: list[Record], lr8: dict, knob: str) -> list[Record]:
    """DoRA cells at its chosen lr that vary ``knob`` and nothing else."""
    return [
        r
        for r in cells
        if r["method"] == "dora" and only(r, knob) and r["lr"] == lr8.get((r["dataset"], "dora"))
    ]


def ablation_table(
    recs: list[Record], setting: Callable[[Record], float], values: tuple, label: str
) -> str:
    """Dev accuracy per dataset x b(T) (rows) and value of the setting (columns)."""
    header = "| dataset | b(T) | " + " | ".join(label.format(v) for v in values) + " |"
    rows = [header, "|---|---|" + "---|" * len(values)]
    for d in DATASETS:
        for b in BUDGETS:
            at = [
                cell(r for r in recs if (r["dataset"], r["budget"], setting(r)) == (d, b, v))
                for v in values
            ]
            rows.append(f"| {d} | {b} | " + " | ".join(at) + " |")
    return "\n".join(rows)


def by_dataset_and_budget(r: Record) -> str:
    return f"{r['dataset']} b(T)={r['budget']}"


def dem_section(cells: list[Record], lr8: dict, out: Path) -> list[str]:
    recs = [r for r in dora_ablation(cells, lr8, "dem_weight") if r0_factor(r) == 1.5]
    with_dem = compare(pairs(recs, lambda r: eta(r) == 0.0, lambda r: eta(r) == 0.1))
    strong = compare(pairs(recs, lambda r: eta(r) == 0.0, lambda r: eta(r) == 0.5))
    png = line_plot(recs, eta, by_dataset_and_budget, "η (DEM weight)", out)
    return [
        *titled(
            "DEM regulariser on / off (paper Table 5)",
            "DoRA at its chosen lr, b(0) = 1.5 b(T), dev accuracy % (mean ± std over seeds).",
        ),
        ablation_table(recs, eta, DEM_WEIGHTS, "η = {:g}"),
        "",
        f"η = 0.1 against η = 0: {describe(with_dem)}. η = 0.5 against η = 0: {describe(strong)}.",
        "",
        *image(png, "dev accuracy against η"),
        verdict(with_dem, "CoLA 65.35 with DEM vs 64.17 without (+1.18)", "the DEM regulariser"),
        "",
    ]


def init_section(cells: list[Record], lr8: dict, out: Path) -> list[str]:
    recs = dora_ablation(cells, lr8, "init_rank")
    flat = compare(pairs(recs, lambda r: r0_factor(r) == 1.0, lambda r: r0_factor(r) == 1.5))
    wide = compare(pairs(recs, lambda r: r0_factor(r) == 1.5, lambda r: r0_factor(r) == 2.0))
    png = line_plot(recs, r0_factor, by_dataset_and_budget, "b(0) / b(T)", out)
    return [
        *titled(
            "Initial budget b(0) (paper Table 6)",
            "DoRA at its chosen lr, η = 0.1, dev accuracy %. b(0) = b(T) prunes nothing "
            "(the gates and the DEM regulariser stay).",
        ),
        ablation_table(recs, r0_factor, INIT_FACTORS, "b(0) = {:g} b(T)"),
        "",
        f"b(0) = 1.5 b(T) against b(0) = b(T): {describe(flat)}. "
        f"2 b(T) against 1.5 b(T): {describe(wide)}.",
        "",
        *image(png, "dev accuracy against b(0) / b(T)"),
        verdict(
            flat,
            "MRPC at b(T)=2: 76.32 with b(0)=2 vs 89.74 with b(0)=3 (+13.4)",
            "starting above the final budget (b(0) = 1.5 b(T) vs b(T))",
        ),
        "",
    ]


def longer_section(cells: list[Record], first: list[Record], out: Path) -> list[str]:
    """900 steps against the first study's 300 (same lr, same seeds): does each method gain
    from the extra epochs, and does DoRA's gap to the baselines change?"""
    recs = [r for r in cells if longer(r)]
    short = [r for r in first if r["budget"] == 8 and r["dataset"] in DATASETS]
    per_epoch = FULL.plan(DATASETS[0]).steps
    epochs = [f"epoch {e}" for e in range(1, EPOCHS + 1)]
    header = f"| dataset | method | {per_epoch} steps (first study) | " + " | ".join(epochs)
    rows = [header + " | did not learn |", "|---|---|---|" + "---|" * EPOCHS + "---|"]
    for d in DATASETS:
        for m in METHODS:
            mine = [r for r in recs if (r["dataset"], r["method"]) == (d, m)]
            seeds = {r["seed"] for r in mine}
            before = [r for r in short if (r["dataset"], r["method"]) == (d, m)]
            at = [cell(r for r in before if r["seed"] in seeds) if mine else "–"]
            for e in range(1, EPOCHS + 1):
                accs = [a for r in mine if (a := epoch_acc(r, e * per_epoch)) is not None]
                at.append(fmt(*mean_std(accs), len(accs)))
            stuck = not_learned(mine)
            at.append(f"{stuck} / {len(mine)}" if mine else "–")
            rows.append(f"| {d} | {METHOD_NAMES[m]} | " + " | ".join(at) + " |")
    both = short + recs
    gain = {
        m: compare(
            pairs(
                both,
                lambda r, m=m: r["method"] == m and not longer(r),
                lambda r, m=m: r["method"] == m and longer(r),
            )
        )
        for m in METHODS
    }
    vs = {
        other: compare(
            pairs(
                recs,
                lambda r, o=other: r["method"] == o,
                lambda r: r["method"] == "dora",
                across_methods=True,
            )
        )
        for other in ("lora", "adalora")
    }
    # the same (dataset, seed) pairs after the first study's steps: did the gap move?
    common = _seeds_of(recs)
    before_vs = compare(
        pairs(
            [r for r in short if (r["dataset"], r["seed"]) in common],
            lambda r: r["method"] == "adalora",
            lambda r: r["method"] == "dora",
            across_methods=True,
        )
    )
    png = epochs_plot(recs, per_epoch, out)
    warmup = FULL.common["warmup_ratio"]
    lines = [
        *titled(
            f"A longer regime: {EPOCHS} epochs of the train cap (b(T) = 8)",
            f"{EPOCHS * per_epoch} optimizer steps (the first study stopped after one epoch, "
            f"{per_epoch}); the pruning calendar scales with T, so DoRA's mask freezes halfway "
            f"and it then trains 1.5 epochs at its final ranks; the {warmup:.0%} warm-up scales "
            f"too ({round(warmup * EPOCHS * per_epoch)} steps instead of "
            f"{round(warmup * per_epoch)}, "
            f"a gentler start at the edge lr {EDGE_LR:g}). Each method at the first "
            "study's lr for b(T) = 8, dev accuracy % after each epoch (the schedule is the "
            f"{EPOCHS}-epoch one, so epoch 1 is not the first study's run, shown beside it "
            "for the same seeds).",
        ),
        "\n".join(rows),
        "",
        f"{EPOCHS} epochs against one, per method (same seeds and lr): "
        + "; ".join(f"{METHOD_NAMES[m]} {describe(gain[m])}" for m in METHODS)
        + ".",
        "",
        f"DoRA against LoRA after {EPOCHS} epochs: {describe(vs['lora'])}. "
        f"DoRA against AdaLoRA: {describe(vs['adalora'])}; the same pairs after "
        f"{per_epoch} steps (first study): {describe(before_vs)}.",
        "",
        *image(png, "dev accuracy over epochs"),
    ]
    return [*lines, ordering_verdict(vs["adalora"], before_vs, per_epoch), ""]


def ordering_verdict(after: Paired | None, before: Paired | None, per_epoch: int) -> str:
    """Does DoRA's gap to AdaLoRA (the first study's strongest baseline) change sign or
    significance with the extra epochs? One sentence, the paper's gap beside it."""
    paper = "the paper: DoRA ahead of AdaLoRA by 0.59 (GLUE average at b(T)=8, many epochs)"
    if after is None or before is None:
        return f"**Verdict:** no paired DoRA and AdaLoRA runs yet; {paper}."

    def reading(p: Paired) -> str:
        side = "ahead of" if p.mean_diff > 0 else "behind" if p.mean_diff < 0 else "level with"
        noise = "beyond seed noise" if p.significant() else "within seed noise"
        return f"{side} AdaLoRA by {abs(p.mean_diff) * 100:.2f} points ({noise})"

    if not (after.significant() or before.significant()):
        change = "neither gap is beyond seed noise, so these pairs show no ordering to change"
    elif (after.mean_diff > 0) == (before.mean_diff > 0) and (
        after.significant() == before.significant()
    ):
        change = "the extra epochs do not change the ordering"
    else:
        change = "the extra epochs change the ordering"
    return (
        f"**Verdict:** after {EPOCHS} epochs DoRA is {reading(after)}, after {per_epoch} "
        f"steps {reading(before)} on the same {after.n} pairs: {change}; {paper}."
    )


def _seeds_of(recs: list[Record]) -> set[tuple[str, int]]:
    """(dataset, seed) of the longer runs of both DoRA and AdaLoRA."""
    by = {m: {(r["dataset"], r["seed"]) for r in recs if r["method"] == m} for m in METHODS}
    return by["dora"] & by["adalora"]


def searched_lr(search: list[Record]) -> dict[tuple[str, str], float]:
    """Round 2's b(T) = 2 choice per (dataset, method), for datasets whose search is complete."""
    done = {r["key"]: r for r in search}
    out = {}
    for d in DATASETS:
        keys = [c.key(ROUND2) for c in lr_b2_search() if c.dataset == d]
        if all(k in done for k in keys):
            out.update(select_lr(done[k] for k in keys))
    return out


def lr_b2_section(search: list[Record], cells: list[Record], round1: list[Record]) -> list[str]:
    chosen = searched_lr(search)
    recs = [
        r
        for r in cells
        if r["budget"] == 2
        and not overrides(r)
        and chosen.get((r["dataset"], r["method"])) == r["lr"]
    ]
    old = [
        r
        for r in round1
        if r["budget"] == 2 and r["dataset"] in DATASETS and r.get("phase") == "final"
    ]
    rows = [
        "| dataset | method | lr (b(T)=8 search) | round 1 | lr (own search) | round 2 |",
        "|---|---|---|---|---|---|",
    ]
    for d in DATASETS:
        for m in METHODS:
            mine_old = [r for r in old if (r["dataset"], r["method"]) == (d, m)]
            mine = [r for r in recs if (r["dataset"], r["method"]) == (d, m)]
            lr_old = f"{mine_old[0]['lr']:g}" if mine_old else "–"
            lr_new = f"{chosen[(d, m)]:g}" if (d, m) in chosen else "searching"
            rows.append(
                f"| {d} | {METHOD_NAMES[m]} | {lr_old} | {cell(mine_old)} | {lr_new} | {cell(mine)} |"
            )
    averages = {m: mean_std([r["accuracy"] for r in recs if r["method"] == m]) for m in METHODS}
    ranked = sorted((v[0], m) for m, v in averages.items() if not math.isnan(v[0]))
    reading = (
        "Average over both datasets at b(T)=2 with its own lr: "
        + ", ".join(f"{METHOD_NAMES[m]} {a * 100:.2f}" for a, m in reversed(ranked))
        + "."
        if len(ranked) == len(METHODS)
        else "The b(T)=2 cells at the searched lr are not complete yet."
    )
    return [
        *titled(
            "Learning rate searched at b(T) = 2",
            "The first study reused b(T)=8's lr at b(T)=2. Here each method's lr is searched "
            "at b(T)=2 on seed 0 (dev macro-F1 / accuracy %, chosen in bold), then 3 seeds run at it.",
        ),
        search_table(search, ROUND2) if search else "Not started.",
        "",
        "\n".join(rows),
        "",
        reading,
        "",
    ]


def stability_section(everything: list[Record], cells: list[Record]) -> list[str]:
    rows = ["| method | runs | did not learn | share |", "|---|---|---|---|"]
    for m in METHODS:
        mine = [r for r in everything if r["method"] == m]
        stuck = not_learned(mine)
        share = f"{stuck / len(mine):.0%}" if mine else "–"
        rows.append(f"| {METHOD_NAMES[m]} | {len(mine)} | {stuck} | {share} |")
    by_lr = [
        "| method | " + " | ".join(f"lr {lr:g}" for lr in FULL.lrs) + " |",
        "|---|" + "---|" * len(FULL.lrs),
    ]
    for m in METHODS:
        parts = []
        for lr in FULL.lrs:
            mine = [r for r in everything if r["method"] == m and r["lr"] == lr]
            stuck = not_learned(mine)
            parts.append(f"{stuck}/{len(mine)}" if mine else "–")
        by_lr.append(f"| {METHOD_NAMES[m]} | " + " | ".join(parts) + " |")
    head = [
        r
        for r in cells
        if r["dataset"] == "rt-snippets"
        and r["budget"] == 8
        and r["lr"] == EDGE_LR
        and only(r, "head_lr")
        and r0_factor_or_lora(r)
    ]
    head_rows = [
        "| method | head lr = lr: not learned / runs, accuracy | head lr 1e-3: not learned / runs, accuracy |",
        "|---|---|---|",
    ]
    for m in METHODS:
        parts = []
        for h in (None, HEAD_LR):
            mine = [r for r in head if r["method"] == m and overrides(r).get("head_lr") == h]
            stuck = not_learned(mine)
            parts.append(f"{stuck} / {len(mine)}, {cell(mine)}" if mine else "–")
        head_rows.append(f"| {METHOD_NAMES[m]} | " + " | ".join(parts) + " |")
    slow = compare(
        pairs(head, lambda r: "head_lr" not in overrides(r), lambda r: "head_lr" in overrides(r))
    )
    stuck_plain = not_learned(r for r in head if "head_lr" not in overrides(r))
    stuck_slow = not_learned(r for r in head if "head_lr" in overrides(r))
    if slow is None:
        reading = "**Verdict:** the head-lr cells have not run yet."
    elif stuck_plain > stuck_slow:
        reading = (
            f"**Verdict:** a slower head removes {stuck_plain - stuck_slow} of {stuck_plain} "
            f"runs that did not learn at lr {EDGE_LR:g} ({slow.describe()})."
        )
    else:
        reading = (
            f"**Verdict:** a slower head does not reduce the runs that did not learn at lr "
            f"{EDGE_LR:g} ({stuck_plain} with the head at lr, {stuck_slow} with 1e-3; "
            f"{slow.describe()}), so the other questions keep head_lr = lr."
        )
    return [
        *titled(
            "Stability: runs that did not learn",
            f"A run did not learn when its dev macro-F1 stays below {LEARNED_F1} (a constant "
            "prediction scores at most 0.47 on these sets; learned runs 0.62 or more). Every "
            "run of both studies (lr searches and final cells, all datasets):",
        ),
        "\n".join(rows),
        "",
        "By learning rate (not learned / runs):",
        "",
        "\n".join(by_lr),
        "",
        f"A separate head learning rate on rt-snippets, b(T) = 8, lr {EDGE_LR:g} (the edge "
        f"where the first study lost a DoRA seed), 3 seeds:",
        "",
        "\n".join(head_rows),
        "",
        reading,
        "",
    ]


def r0_factor_or_lora(r: Record) -> bool:
    """Default start rank: 1.5 b(T) for the pruning methods, b(T) for LoRA."""
    return r["method"] == "lora" or r0_factor(r) == 1.5


def epoch_acc(r: Record, step: int) -> float | None:
    return next((e["accuracy"] for e in r.get("evals") or [] if e["step"] == step), None)


def describe(p: Paired | None) -> str:
    return p.describe() if p is not None else "no pairs yet"


# --- plots (plotly, exported by kaleido like the heatmaps) ---------------------------------------


def image(png: Path | None, alt: str) -> list[str]:
    if png is None:
        return []
    rel = png.relative_to(ROOT / "docs") if png.is_relative_to(ROOT / "docs") else png
    return [f"![{alt}]({rel})", ""]


def line_plot(
    recs: list[Record],
    x: Callable[[Record], float],
    series: Callable[[Record], str],
    x_title: str,
    out: Path,
) -> Path | None:
    """Mean dev accuracy against ``x``, one line per series (error bars: std over seeds)."""
    if not recs:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    for name in sorted({series(r) for r in recs}):
        xs = sorted({x(r) for r in recs if series(r) == name})
        stats = [
            mean_std([r["accuracy"] * 100 for r in recs if series(r) == name and x(r) == v])
            for v in xs
        ]
        fig.add_scatter(
            x=xs,
            y=[m for m, _ in stats],
            error_y={"array": [s for _, s in stats]},
            name=name,
            mode="lines+markers",
        )
    fig.update_layout(xaxis_title=x_title, yaxis_title="dev accuracy %", template="plotly_white")
    return write_png(fig, out)


def epochs_plot(recs: list[Record], per_epoch: int, out: Path) -> Path | None:
    if not recs:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    for d in DATASETS:
        for m in METHODS:
            mine = [r for r in recs if (r["dataset"], r["method"]) == (d, m)]
            points = []
            for e in range(1, EPOCHS + 1):
                accs = [a for r in mine if (a := epoch_acc(r, e * per_epoch)) is not None]
                if accs:
                    points.append((e, mean_std([a * 100 for a in accs])[0]))
            if points:
                fig.add_scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    name=f"{d} {METHOD_NAMES[m]}",
                    mode="lines+markers",
                )
    fig.update_layout(xaxis_title="epoch", yaxis_title="dev accuracy %", template="plotly_white")
    fig.update_xaxes(dtick=1)  # whole epochs only
    return write_png(fig, out)


def write_png(fig: Any, out: Path) -> Path:
    fig.update_layout(margin={"t": 30, "b": 50})
    out.parent.mkdir(parents=True, exist_ok=True)
    with_kaleido_retry(lambda: fig.write_image(str(out), width=760, height=420, scale=1))
    return out


# --- the whole round ----------------------------------------------------------------------


def status(search: list[Record], cells: list[Record], lr8: dict) -> str:
    """How much of the plan is done, and what still runs."""
    lr2 = searched_lr(search)
    done = {r["key"] for r in cells} | {r["key"] for r in search}
    missing = {q: 0 for q in QUESTIONS}
    seen: set[str] = set()
    for q in QUESTIONS:
        for c in question_cells(q, lr8, lr2):
            key = c.key(ROUND2)
            if key not in done and key not in seen:
                missing[q] += 1
                seen.add(key)
    missing["lr_b2"] += sum(c.key(ROUND2) not in done for c in lr_b2_search())
    unknown = [d for d in DATASETS if (d, "dora") not in lr2]
    missing["lr_b2"] += 2 * len(METHODS) * len(unknown)  # seeds 1 and 2 at the searched lr
    if not any(missing.values()):
        return "Complete: every planned cell has finished."
    todo = ", ".join(f"{q} {n}" for q, n in missing.items() if n)
    return (
        f"**Partial:** {len(cells)} cells finished; still to run (cells per question): {todo}. "
        f"The study resumes with `{COMMAND}`; verdicts below are on what has finished."
    )


def section(results_dir: Path) -> list[str]:
    """The round-2 part of docs/results.md; its plots go to ``results_dir``."""
    r1 = load(results_dir, "full")
    r2 = load(results_dir, ROUND2.name)
    cells = list({r["key"]: r for r in r2["cells"] if r.get("phase") == "final"}.values())
    if not cells and not r2["search"]:
        return ["## Round 2: ablations, a longer regime, lr at b(T) = 2", "", "Not started.", ""]
    lr8 = select_lr(r1["search"])
    everything = list(
        {r["key"]: r for r in [*r1["search"], *r1["cells"], *r2["search"], *cells]}.values()
    )
    return [
        "## Round 2: ablations, a longer regime, lr at b(T) = 2",
        "",
        "Planned by `bench/study_round2.py` on rt-snippets and tweets with the first study's "
        "caps, lengths and schedule; a cell identical to a first-study cell reuses its record. "
        "Paired comparisons pair runs of the same dataset, b(T), method and seed (same split, "
        f"init and data order). Command: `{COMMAND}`.",
        "",
        status(r2["search"], cells, lr8),
        "",
        *dem_section(cells, lr8, results_dir / "round2-dem.png"),
        *init_section(cells, lr8, results_dir / "round2-init.png"),
        *longer_section(cells, r1["cells"], results_dir / "round2-epochs.png"),
        *lr_b2_section(r2["search"], cells, r1["cells"]),
        *stability_section(everything, cells),
    ]
