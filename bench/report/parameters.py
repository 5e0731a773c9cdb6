"""Trainable parameters per method and budget: what the worker trained, what is live at the
end, and the classifier head."""

from __future__ import annotations

from typing import Any

from bench.report.common import METHOD_NAMES, GridResults, span
from bench.study_grid import Grid, group


def section(results: GridResults) -> list[str]:
    cells, grid = results.cells, results.grid
    return [
        "### Trainable parameters",
        "",
        params_table(cells, grid) if cells else "No cells yet.",
        "",
        '"Trained adapter params at the end" is what the worker reports: for DoRA the '
        "compacted factors after the mask froze (pruned components are sliced out), for PEFT "
        "AdaLoRA all r' triplets (PEFT masks pruned ones but keeps them in memory), for LoRA "
        'rank b(T). "Live" counts r × (d_in + d_out + 1) of the components alive at the end '
        "(LoRA: r × (d_in + d_out)). All three end with exactly b(T) × 36 live components; the "
        "live parameters differ because a component of an FFN matrix (384 + 1536 + 1) costs 2.5 "
        "times one of an attention matrix (384 + 384 + 1), so an allocation that favours the "
        "FFN holds more parameters for the same b(T). DoRA and AdaLoRA train r' = 1.5 b(T) "
        "components per layer until the mask freezes halfway through the run.",
        "",
    ]


def params_table(records: list[dict[str, Any]], grid: Grid) -> str:
    """Trainable parameters per method and budget (they do not depend on the dataset, except
    the head, which depends on the number of classes, and DoRA/AdaLoRA's allocation)."""
    lines = [
        "| b(T) | method | r' (start) | live components at the end | trained adapter params at the end | live adapter params at the end | head params (2 / 3 / 5 classes) |",
        "|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(
        group(records, "budget", "method"), key=lambda kv: (kv[0][0], grid.methods.index(kv[0][1]))
    )
    for (b, m), recs in ordered:
        adapter = sorted({r["adapter_params"] for r in recs})
        live = sorted({r["live_adapter_params"] for r in recs if r.get("live_adapter_params")})
        comps = sorted({live_components(r) for r in recs})
        heads = sorted({r["head_params"] for r in recs})
        lines.append(
            f"| {b} | {METHOD_NAMES[m]} | {recs[0]['init_rank']} | {span(comps)} | {span(adapter)} | {span(live)} | {' / '.join(f'{h:,}' for h in heads)} |"
        )
    return "\n".join(lines)


def live_components(record: dict[str, Any]) -> int:
    """Components alive at the end, over all adapted layers (LoRA: all of them)."""
    if record.get("rank_pattern"):
        return sum(row["live"] for row in record["rank_pattern"])
    return record["budget"] * 36 if record["method"] == "lora" else 0
