"""Round 2's report: the paired tests against hand-computed values, and the DEM section
read from result lines."""

from __future__ import annotations

import json

import pytest

from bench.report import round2
from bench.report.paired import compare, paired_t, sign_test
from bench.study_grid import FULL, Cell, search_cells
from bench.study_round2 import ROUND2, question_cells
from tests.study import fake_record


def test_sign_test_is_the_exact_binomial() -> None:
    assert sign_test(5, 0) == pytest.approx(2 / 32)  # both tails of 1/32
    assert sign_test(3, 2) == 1.0  # (1 + 5 + 10) / 32 doubled, capped
    assert sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert sign_test(0, 0) == 1.0


def test_paired_t_matches_a_hand_computed_case() -> None:
    # diffs 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641 with 2 dof -> p = 0.07418
    assert paired_t([1.0, 2.0, 3.0]) == pytest.approx(0.07418, abs=1e-4)
    assert paired_t([1.0]) is None and paired_t([2.0, 2.0]) is None


def test_compare_counts_pairs_and_ties() -> None:
    p = compare([(0.5, 0.6), (0.5, 0.4), (0.7, 0.7), (0.2, 0.5)])
    assert (p.n, p.wins, p.losses) == (4, 2, 1)
    assert p.mean_diff == pytest.approx((0.1 - 0.1 + 0.0 + 0.3) / 4)
    assert "+7.50 points over 4 pairs (2 up, 1 down" in p.describe()
    assert compare([]) is None


def test_the_dem_section_reads_its_cells_and_gives_a_verdict(tmp_path) -> None:
    """η = 0.1 beats η = 0 by 2.0-2.2 points in all 12 pairs: the verdict says it helps."""
    lr8 = {(d, m): 1e-3 for d in ("rt-snippets", "tweets") for m in ("dora", "lora", "adalora")}
    search = [fake_record(c, FULL, 0.9 if c.lr == 1e-3 else 0.5) for c in search_cells(FULL)]
    with open(tmp_path / "full-search.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in search)
    lines = []
    for cell in question_cells("dem", lr8, {}):
        eta = dict(cell.overrides).get("dem_weight", 0.1)
        spread = (2 if eta == 0.1 else 1) * cell.seed / 1000  # the gain varies a little by seed
        record = fake_record(cell, ROUND2, {0.0: 0.80, 0.1: 0.82, 0.5: 0.81}[eta] + spread)
        record.update(overrides=dict(cell.overrides), init_rank=cell.init_rank)
        lines.append(json.dumps(record) + "\n")
    (tmp_path / "round2-cells.jsonl").write_text("".join(lines))
    text = "\n".join(round2.section(tmp_path))
    assert "| rt-snippets | 2 | 80.10 ± 0.10 | 82.20 ± 0.20 | 81.10 ± 0.10 |" in text
    assert "η = 0.1 against η = 0: +2.10 points over 12 pairs (12 up, 0 down" in text
    assert "**Verdict:** here the DEM regulariser helps" in text
    assert "CoLA 65.35 with DEM vs 64.17 without" in text
    assert "**Partial:**" in text and "dem" not in text.split("**Partial:**")[1].split(";")[1]
    assert (tmp_path / "round2-dem.png").stat().st_size > 1000


def test_round_two_not_started_says_so(tmp_path) -> None:
    assert round2.section(tmp_path)[-2] == "Not started."


def test_r0_factor_of_each_planned_init_cell() -> None:
    cells = question_cells("init_rank", {(d, "dora"): 1e-3 for d in ("rt-snippets", "tweets")}, {})
    got = {
        (c.budget, round2.r0_factor({"budget": c.budget, "init_rank": c.init_rank})) for c in cells
    }
    assert got == {(b, f) for b in (2, 8) for f in (1.0, 1.5, 2.0)}
    assert isinstance(cells[0], Cell)


def test_the_longer_section_pairs_methods_and_compares_with_the_first_study(tmp_path) -> None:
    """Hand-made scores: after 300 steps (first study) DoRA trails AdaLoRA by 2.0-2.2 points
    in every pair, after 900 it leads by 2.0-2.4; LoRA never learns in the longer runs."""
    search = [fake_record(c, FULL, 0.9 if c.lr == 1e-3 else 0.5) for c in search_cells(FULL)]
    first, longer = [], []
    for dataset in ("rt-snippets", "tweets"):
        for seed in (0, 1, 2):
            short = {"dora": 0.80, "lora": 0.81, "adalora": 0.82 + seed / 1000}
            final = {"dora": 0.85 + 2 * seed / 1000, "lora": 0.40, "adalora": 0.83}
            for method in ("dora", "lora", "adalora"):
                base = {"dataset": dataset, "budget": 8, "seed": seed, "method": method}
                first.append(
                    {**base, "key": f"f{dataset}{seed}{method}", "phase": "final", "lr": 1e-3}
                    | {"accuracy": short[method], "macro_f1": short[method]}
                )
                longer.append(
                    {**base, "key": f"l{dataset}{seed}{method}", "phase": "final", "lr": 1e-3}
                    | {"accuracy": final[method], "macro_f1": final[method]}
                    | {"overrides": {"max_steps": 900, "eval_every": 300}, "init_rank": 12}
                    | {"evals": [{"step": s, "accuracy": final[method]} for s in (300, 600, 900)]}
                )
    for name, rows in (("full-search", search), ("full-cells", first), ("round2-cells", longer)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = "\n".join(round2.section(tmp_path))
    assert "| tweets | LoRA (PEFT) | 81.00 ± 0.00 | 40.00 ± 0.00 | 40.00 ± 0.00" in text
    assert text.count("| 3 / 3 |") == 2 and text.count("| 0 / 3 |") == 4  # did not learn
    # DoRA 900 vs 300 steps: +5.0, +5.2, +5.4 per dataset
    assert "DoRA (ours) +5.20 points over 6 pairs (6 up, 0 down; sign test p = 0.031" in text
    assert "DoRA against LoRA after 3 epochs: +45.20 points over 6 pairs" in text
    assert "DoRA against AdaLoRA: +2.20 points over 6 pairs (6 up, 0 down" in text
    assert "after 300 steps (first study): -2.10 points over 6 pairs (0 up, 6 down" in text
    assert (
        "after 3 epochs DoRA is ahead of AdaLoRA by 2.20 points (beyond seed noise), after 300 "
        "steps behind AdaLoRA by 2.10 points (beyond seed noise) on the same 6 pairs: the extra "
        "epochs change the ordering"
    ) in text


def test_the_ordering_verdict_reads_noise_as_noise() -> None:
    # six pairs all one way: sign test p = 2 / 64; the spread is small, so t agrees
    up = [(0.80, 0.82), (0.80, 0.821), (0.80, 0.822), (0.7, 0.72), (0.7, 0.721), (0.7, 0.722)]
    ahead, behind = compare(up), compare([(b, a) for a, b in up])
    noisy = compare([(0.80, 0.85), (0.80, 0.76), (0.80, 0.81)])
    assert ahead.significant() and behind.significant() and not noisy.significant()
    assert "the extra epochs change the ordering" in round2.ordering_verdict(ahead, behind, 300)
    assert "do not change the ordering" in round2.ordering_verdict(ahead, ahead, 300)
    assert "show no ordering to change" in round2.ordering_verdict(noisy, noisy, 300)
    assert "no paired DoRA and AdaLoRA runs yet" in round2.ordering_verdict(None, ahead, 300)
