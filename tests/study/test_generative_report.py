"""The generative grid's report section, on records and JSONL files written here with
hand-chosen numbers (means and sample standard deviations computed by hand)."""

from __future__ import annotations

import json
from typing import Any

from bench.report import generative
from bench.study_generative import GENERATIVE
from bench.study_grid import Cell


def record(method: str, seed: int, r1: float, r2: float, rl: float, ppl: float, **extra) -> dict:
    cell = Cell("final", "bbc-summary", method, 8, seed, 1e-3)
    return {
        "key": cell.key(GENERATIVE),
        "phase": "final",
        "task": "causal-lm",
        "dataset": "bbc-summary",
        "method": method,
        "budget": 8,
        "seed": seed,
        "lr": 1e-3,
        "rouge1": r1,
        "rouge2": r2,
        "rougeL": rl,
        "perplexity": ppl,
        "live_adapter_params": 1_000_000 + seed,
        "train_s": 1500.0 + seed,
        "wall_s": 1600.0 + seed,
        "rank_pattern": None,
        **extra,
    }


def pattern(q: int, down: int) -> list[dict[str, Any]]:
    """Two layers, two module types."""
    return [
        {"module": f"model.layers.{i}.{t}", "layer": i, "type": t, "live": live}
        for i in range(2)
        for t, live in (("self_attn.q_proj", q), ("mlp.down_proj", down))
    ]


RECORDS = [
    record("dora", 0, 0.30, 0.10, 0.25, 20.0, rank_pattern=pattern(4, 12)),
    record("dora", 1, 0.34, 0.14, 0.27, 26.0, rank_pattern=pattern(6, 10)),
    record("lora", 0, 0.28, 0.08, 0.22, 30.0),
]


def row(table: str, method: str) -> list[str]:
    line = next(x for x in table.splitlines() if f"| {method}" in x)
    return [c.strip() for c in line.strip("|").split("|")]


def test_mean_and_std_per_method() -> None:
    table = generative.metric_table(RECORDS, GENERATIVE)
    # DoRA: ROUGE-1 (0.30, 0.34): mean 32.00, sample std sqrt(2 x 0.02^2) = 2.83 (percent);
    # ROUGE-2 (0.10, 0.14): 12.00 ± 2.83; ROUGE-L (0.25, 0.27): 26.00 ± 1.41;
    # perplexity (20, 26): 23.00 ± 4.24. Live params 1,000,000 and 1,000,001.
    assert row(table, "DoRA") == [
        "8",
        "DoRA (ours)",
        "32.00 ± 2.83 (n=2)",
        "12.00 ± 2.83 (n=2)",
        "26.00 ± 1.41 (n=2)",
        "23.00 ± 4.24 (n=2)",
        "1,000,000 – 1,000,001",
    ]
    assert row(table, "LoRA")[2:6] == ["28.00 (n=1)", "8.00 (n=1)", "22.00 (n=1)", "30.00 (n=1)"]
    assert "AdaLoRA" not in table  # no cell yet: no row
    assert table.splitlines()[0] == (
        "| b(T) | method | ROUGE-1 (%) | ROUGE-2 (%) | ROUGE-L (%) | perplexity | live adapter params |"
    )


def test_rank_table_averages_layers_and_seeds() -> None:
    table = generative.rank_table(RECORDS, GENERATIVE)
    # DoRA q_proj: (4 + 4 + 6 + 6) / 4 = 5.0; down_proj: (12 + 12 + 10 + 10) / 4 = 11.0;
    # LoRA keeps b(T) = 8 in every module.
    assert table.splitlines()[0] == "| method | self_attn.q_proj | mlp.down_proj |"
    assert "| DoRA (ours) | 5.0 | 11.0 |" in table
    assert "| LoRA (PEFT) | 8.0 | 8.0 |" in table


def test_paper_numbers_only_when_recorded() -> None:
    assert "does not record the paper's XSum numbers" in generative.paper_context({}, "")
    # The layout with stand-in numbers (not the paper's): one row per method.
    text = generative.paper_context({"dora": (1.0, 2.0, 3.0)}, "Source: table N.")
    assert "| DoRA (ours) | 1.00 | 2.00 | 3.00 |" in text and "Source: table N." in text


def test_section_from_jsonl_files(tmp_path) -> None:
    assert "Status: defined, not run yet (0 of 6 cells)." in generative.section(tmp_path)
    lines = [json.dumps(r) + "\n" for r in RECORDS]
    lines.append('{"key": "torn", "rou')  # a crash mid-line: ignored
    (tmp_path / "generative-cells.jsonl").write_text("".join(lines))
    text = "\n".join(generative.section(tmp_path))
    assert "Status: partial, 3 of 6 cells finished." in text
    assert "32.00 ± 2.83 (n=2)" in text
    assert "`.venv/bin/python bench/study.py --generative --jobs 2`" in text
    # what was cut, from the grid's definition: 120 x 4 = 480 examples = 26% of 1,835
    cut = text.split("### What was cut to fit the budget")[1]
    assert "120 steps of batch 4: 480 examples" in cut and "26% of the 1,835" in cut
    assert "ROUGE on 64" in cut and "48 new tokens" in cut and "2 seeds" in cut
    assert "### Time per cell" in text and "1500 / 1600 (n=1)" in text  # LoRA's one cell
