"""The paper's Figure 2 observations (where DoRA puts rank in RoBERTa-base) next to ours, from
the mean rank matrices of ``bench.report.heatmaps``, as live ranks relative to b(T)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.report.common import TYPE_SHORT


def type_profile(matrices: dict[str, dict[str, Any]], budget: int) -> dict[str, Any]:
    """Averages over datasets of the mean rank matrices, as ratios to b(T) (the mean of all
    cells is exactly b(T), a global budget): per type, per (type, layer group)."""
    if not matrices:
        return {}
    ratio: dict[tuple[int, str], list[float]] = {}
    for matrix in matrices.values():
        for i, layer in enumerate(matrix["layers"]):
            for j, t in enumerate(matrix["full_types"]):
                if matrix["live"][i][j] is not None:
                    ratio.setdefault((layer, t), []).append(matrix["live"][i][j] / budget)
    cell = {k: sum(v) / len(v) for k, v in ratio.items()}
    layers = sorted({k[0] for k in cell})
    n = len(layers)
    early, middle, last = (
        layers[: max(1, n // 3)],
        layers[n // 3 : n - n // 3] or layers,
        layers[-1:],
    )

    def mean(types: Sequence[str], chosen: Sequence[int]) -> float:
        values = [cell[(layer, t)] for layer in chosen for t in types if (layer, t) in cell]
        return sum(values) / len(values) if values else float("nan")

    q, k, v = "attention.self.query", "attention.self.key", "attention.self.value"
    o, f1, f2 = "attention.output.dense", "intermediate.dense", "output.dense"
    return {
        "by_type": {t: mean([t], layers) for t in (q, k, v, o, f1, f2)},
        "qk_middle": mean([q, k], middle),
        "qk_other": mean([q, k], [x for x in layers if x not in middle]),
        "attn_out_early": mean([o], early),
        "attn_out_late": mean([o], [x for x in layers if x not in early]),
        "value": mean([v], layers),
        "ffn2_last": mean([f2], last),
        "ffn2_other": mean([f2], layers[:-1]),
        "groups": {"early": early, "middle": middle, "last": last},
    }


def figure2_table(profiles: dict[int, dict[str, Any]]) -> list[str]:
    """The paper's Figure 2 observations next to ours, as live ranks relative to b(T)."""
    budgets = [b for b, p in profiles.items() if p]
    if not budgets:
        return ["No DoRA rank patterns yet."]
    g = profiles[budgets[0]]["groups"]
    lines = [
        "| paper (Figure 2, RoBERTa-base) | measured here: live rank / b(T), mean over datasets and seeds | "
        + " | ".join(f"b(T)={b}" for b in budgets)
        + " | agrees? |",
        "|---|---|" + "---|" * len(budgets) + "---|",
    ]
    checks = [
        (
            "more rank to query/key in middle layers",
            f"query+key, layers {g['middle']} (vs other layers)",
            "qk_middle",
            "qk_other",
            "above",
        ),
        (
            "more rank to early attention-output matrices",
            f"attn.out, layers {g['early']} (vs later layers)",
            "attn_out_early",
            "attn_out_late",
            "above",
        ),
        (
            "less rank to value matrices",
            "value, all layers (vs 1.00 = b(T))",
            "value",
            None,
            "below",
        ),
        (
            "very little rank to the last layer's second FFN matrix",
            f"ffn.out, layer {g['last']} (vs 1.00 = b(T); earlier layers' ffn.out in the next line)",
            "ffn2_last",
            None,
            "below",
        ),
    ]
    verdicts: list[str] = []
    for claim, what, key, ref, direction in checks:
        values, agree = [], []
        for b in budgets:
            p = profiles[b]
            base = p[ref] if ref else 1.0
            values.append(f"{p[key]:.2f} (vs {base:.2f})")
            agree.append(p[key] > base if direction == "above" else p[key] < base)
        verdict = "yes" if all(agree) else ("no" if not any(agree) else "mixed")
        verdicts.append(verdict)
        lines.append(f"| {claim} | {what} | " + " | ".join(values) + f" | {verdict} |")
    lines += [
        "",
        "ffn.out of the earlier layers: "
        + ", ".join(f"b(T)={b} {profiles[b]['ffn2_other']:.2f}" for b in budgets)
        + ".",
        "",
        f"Of the paper's four observations, {verdicts.count('yes')} hold at every budget "
        f"measured here, {verdicts.count('mixed')} at some budgets only and "
        f"{verdicts.count('no')} at none.",
    ]
    by_type = [
        f"{TYPE_SHORT[t]} {profiles[b]['by_type'][t]:.2f}"
        for b in budgets[:1]
        for t in profiles[b]["by_type"]
    ]
    lines.append("")
    lines.append(
        f"Mean live rank / b(T) by module type at b(T)={budgets[0]}: " + ", ".join(by_type) + "."
    )
    for b in budgets[1:]:
        lines.append(
            f"At b(T)={b}: "
            + ", ".join(
                f"{TYPE_SHORT[t]} {profiles[b]['by_type'][t]:.2f}" for t in profiles[b]["by_type"]
            )
            + "."
        )
    return lines
