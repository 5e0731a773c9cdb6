"""The report generator, on small JSONL files written here with hand-chosen numbers."""

from __future__ import annotations

import json

from bench import report as study_report
from bench.study_grid import FULL, Cell, DatasetPlan, Grid
from tests.conftest import BERT_TYPES as TYPES


def pattern(live_of) -> list[dict]:
    """A DoRA rank pattern over MiniLM's 6 x 6 projections, live = live_of(layer, type)."""
    return [
        {
            "module": f"bert.encoder.layer.{layer}.{t}",
            "layer": layer,
            "type": t,
            "live": live_of(layer, t),
        }
        for layer in range(6)
        for t in TYPES
    ]


def record(method: str, seed: int, acc: float, f1: float, budget: int = 8, **extra) -> dict:
    cell = Cell("final", "rt-snippets", method, budget, seed, 1e-3)
    return {
        "key": cell.key(FULL),
        "phase": "final",
        "dataset": "rt-snippets",
        "method": method,
        "budget": budget,
        "init_rank": budget if method == "lora" else 12,
        "seed": seed,
        "lr": 1e-3,
        "accuracy": acc,
        "macro_f1": f1,
        "adapter_params": 1000,
        "live_adapter_params": 1000,
        "head_params": 770,
        "train_s": 10.0 + seed,
        "wall_s": 20.0 + seed,
        "rank_pattern": None,
        **extra,
    }


def write(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_mean_and_std_over_seeds_in_the_table() -> None:
    records = [
        record("dora", 0, 0.80, 0.70),
        record("dora", 1, 0.85, 0.75),
        record("dora", 2, 0.90, 0.80),
        record("lora", 0, 0.70, 0.60),
        record("lora", 1, 0.75, 0.65),
    ]
    table = study_report.metric_table(records, FULL, "accuracy")
    row = next(line for line in table.splitlines() if line.startswith("| rt-snippets"))
    # dora: mean 85, sample std sqrt((25 + 0 + 25) / 2) = 5; lora: mean 72.5,
    # std sqrt((6.25 + 6.25) / 1) = 3.54, two seeds so far.
    assert "**85.00 ± 5.00**" in row
    assert "72.50 ± 3.54 (n=2)" in row
    # the average row stays empty until every dataset has every seed
    assert table.splitlines()[-1].startswith("| **average** | – |")
    f1 = study_report.metric_table(records, FULL, "macro_f1")
    assert "**75.00 ± 5.00**" in f1


def test_wins_reading_compares_with_the_best_baseline() -> None:
    records = [record("dora", s, a, a) for s, a in enumerate((0.80, 0.82, 0.84))]
    records += [record("lora", s, a, a) for s, a in enumerate((0.60, 0.62, 0.64))]
    records += [record("adalora", s, a, a) for s, a in enumerate((0.85, 0.86, 0.87))]
    lines = study_report.wins_reading(records, FULL)
    assert "**0 of 1**" in lines[0]
    # adalora mean 86 is the best baseline: dora 82 is 4 points behind, more than the
    # larger std (2), so the gap is not "within the seed spread".
    assert "AdaLoRA (PEFT) 86.00" in lines[1]
    assert "-4.00 points, DoRA behind, beyond the seed spread;" in lines[1]


ONE_SEED = Grid(
    name="t",
    datasets=(DatasetPlan("rt-snippets", steps=10, max_length=16, max_train=32, max_dev=16),),
    seeds=(0,),
)


def test_verdict_ranks_the_averages_and_says_whether_the_headline_holds() -> None:
    accs = {2: {"dora": 0.90, "lora": 0.80, "adalora": 0.85}, 8: {"dora": 0.70, "lora": 0.80}}
    records = [record(m, 0, a, a, budget=b) for b, row in accs.items() for m, a in row.items()]
    # a column without its seeds: no verdict yet
    assert study_report.headline_verdict(records, ONE_SEED) == []
    records.append(record("adalora", 0, 0.75, 0.75, budget=8))
    head, _, b2, b8 = study_report.headline_verdict(records, ONE_SEED)
    assert "**reproduced at some budgets only**" in head and "over the 1 dataset," in head
    assert b2.startswith("- b(T)=2: DoRA (ours) 90.00, AdaLoRA (PEFT) 85.00, LoRA (PEFT) 80.00")
    assert "(paper, GLUE: DoRA 86.38, AdaLoRA 85.93, LoRA 85.50)" in b2
    assert b8.startswith("- b(T)=8: LoRA (PEFT) 80.00, AdaLoRA (PEFT) 75.00, DoRA (ours) 70.00")


def test_a_tie_at_the_top_is_not_a_win() -> None:
    records = [
        record(m, 0, a, a, budget=b)
        for b in (2, 8)
        for m, a in (("dora", 0.9), ("lora", 0.9), ("adalora", 0.8))
    ]
    head = study_report.headline_verdict(records, ONE_SEED)[0]
    assert "**not reproduced**" in head


def test_figure2_comparison_on_a_hand_made_allocation() -> None:
    # b(T) = 2: q/k in the middle layers (2, 3) get 3, value gets 1, everything else 2,
    # the last layer's second FFN matrix 0.
    def live(layer: int, t: str) -> int:
        if t in TYPES[:2] and layer in (2, 3):
            return 3
        if t == "attention.self.value":
            return 1
        if t == "output.dense" and layer == 5:
            return 0
        return 2

    matrix = study_report.rank_matrix([{"rank_pattern": pattern(live)}], r_max=3)
    assert matrix["live"][2][0] == 3 and matrix["live"][5][5] == 0
    profile = study_report.type_profile({"rt-snippets": matrix}, budget=2)
    assert profile["groups"] == {"early": [0, 1], "middle": [2, 3], "last": [5]}
    assert profile["qk_middle"] == 1.5 and profile["qk_other"] == 1.0
    assert profile["value"] == 0.5 and profile["ffn2_last"] == 0.0
    table = "\n".join(study_report.figure2_table({2: profile}))
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert rows["more rank to query/key in middle layers"].endswith("| yes |")
    assert rows["less rank to value matrices"].endswith("| yes |")
    # attention output: 2 everywhere, so not more in the early layers
    assert rows["more rank to early attention-output matrices"].endswith("| no |")


def test_report_from_jsonl_files(tmp_path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    records = [
        record("dora", s, a, a, rank_pattern=pattern(lambda layer, t: 8))
        for s, a in enumerate((0.8, 0.85, 0.9))
    ]
    records.append(record("lora", 0, 0.5, 0.4))
    write(results / "full-cells.jsonl", records)
    with (results / "full-cells.jsonl").open("a") as fh:
        fh.write('{"key": "torn", "dataset"')  # a crash mid-line: ignored
    out = study_report.write_report(results, tmp_path / "results.md")
    text = out.read_text()
    assert "**Status:** 4 of 72 grid cells" in text
    assert "85.00 ± 5.00" in text and "50.00 (n=1)" in text
    assert "| rt-snippets | 0/3 | 0/3 | 0/3 | 3/3 | 1/3 | 0/3 |" in text
    png = results / "full-rank-b8.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (results / "full-rank-b2.png").exists()  # no b(T)=2 DoRA cell yet


def test_runs_that_did_not_learn_are_listed() -> None:
    # rt-snippets is binary: macro-F1 0.335 (one class) is stuck, 0.60 is learning.
    records = [record("lora", 0, 0.504, 0.335), record("lora", 1, 0.62, 0.60)]
    records += [record("dora", 0, 0.80, 0.80)]
    lines = study_report.stuck_reading(records, FULL)
    assert "DoRA (ours) 0 of 1, LoRA (PEFT) 1 of 2, AdaLoRA (PEFT) 0 of 0" in lines[0]
    assert lines[1:] == [
        "- LoRA (PEFT): rt-snippets, b(T)=8, seed 0, lr 0.001: accuracy 50.4, macro-F1 33.5."
    ]


def test_wins_reading_also_gives_means_without_runs_that_did_not_learn() -> None:
    records = [record("dora", s, a, a) for s, a in enumerate((0.80, 0.82, 0.84))]
    records += [record("lora", 0, 0.504, 0.335), record("lora", 1, 0.86, 0.86)]
    (line,) = study_report.wins_reading(records, FULL)[1:]
    # with the stuck run: lora (50.4 + 86) / 2 = 68.2; without it: 86.00 from one seed
    assert "DoRA 82.00 vs best baseline LoRA (PEFT) 68.20" in line
    assert line.endswith(
        "Without the runs that did not learn: DoRA (ours) 82.00 (n=3), LoRA (PEFT) 86.00 (n=1)."
    )
