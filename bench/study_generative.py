"""The generative grid as data: bbc-summary with SmolLM2-135M, DoRA vs LoRA vs AdaLoRA.

Pure code (stdlib only), like ``study_grid``: the paper's generation task
(XSum summaries with BART) on what installs offline, the ``bbc-summary``
preset (BBC articles -> their lead sentence, built the way XSum was) and the
``smollm2-135m`` preset trained as a causal LM (``task: causal-lm``, loss on
the summary tokens). Three methods at b(T) = 8, seeds 0 and 1: 6 cells, every
one a plain ``dora train`` job through ``bench/study.py --generative``; each
record carries ROUGE-1/2/L (greedy samples of the dev set), perplexity and
dev loss. The GGUF preset is dequantised once into the float copy under
``~/.cache/dora`` (the runner's layout step does it before any cell starts),
so no cell pays the 50 s GGUF load.

Sizing. Measured 2026-12-02 while the machine was busy with another study
(1-minute load average 6 to 14 on its 2 cores; wall time ran 1.4x to 3.8x the
process's CPU time): a 10-step ``dora train`` job on bbc-summary (batch 4,
256 tokens, OMP_NUM_THREADS=1, 64 train / 8 dev examples, 4 samples) took
8 min 31 s of wall; a timing script over ``bench/step.py``'s SmolLM2 set-up gave,
in CPU seconds of one thread (medians):

    optimizer step, batch 4 x 256 tokens    DoRA (r' = 12) 11.3, PEFT LoRA r = 8 11.3,
                                            PEFT AdaLoRA 10.6; DoRA at 384 tokens 17.6
    dev loss (forward), per example          1.1   (8 x 256 tokens: 8.7)
    greedy sample, 48 new tokens, each       1.9   (8 prompts of 205-237 tokens: 15.0)
    start-up (process, cached model, tokenising the 2,039 examples)   about 25

CPU time on a shared core is if anything above an idle core's (the cache is
shared too). On an idle 2-core machine ``--jobs 2`` runs two single-threaded
cells at once, each step taking 1.3x its CPU time in wall time (MiniLM:
0.45 s for 0.35 s, ``study_grid``). The 6 cells are 3 waves of 2 (the one-point lr "search" is
the seed-0 cells and does not hold seed 1 back), so 2 h leaves 2,400 s of
wall per cell. A cell of T steps costs (``cell_seconds``)

    1.3 x (25 + 11.3 T + 1.1 x 128 dev examples + 1.9 x 64 samples)  s

and T = 120 gives 1.3 x 1,643 = 2,136 s (36 min) a cell, 3 waves in 107 min
(``grid_hours``): about 2 h with 13 min for the estimate's error (T = 140
would need 2.03 h). Cut to fit (the report says so): 120 steps x 4 = 480
training examples (26% of the 1,835), each seen once; 256
tokens, so 90% of the prompts lose the middle of their article (the
article's start and the ``Summary:`` cue stay; the median prompt is 416
tokens; 384 tokens cost 1.56x per step); dev loss on 128 of the 204 dev
examples and ROUGE on the first 64 of them; 48 new tokens (the reference
leads: median 28 tokens, 95th percentile 41); b(T) = 8 only, 2 seeds.

Learning rate: one lr, 1e-3, for every method, no search. A search of even
two values would make 9 cells (the 3 search cells of the second value are
extra): 5 waves, 3.0 h at these steps, or 72 steps per cell to stay in 2 h;
steps matter more here than lr resolution. 1e-3 is inside the range the first
study's search picked for every method with these adapters (alpha 8, r' = 12,
LoRA r = 8, batch 16: 1e-3 to 1e-2, each method chose 1e-3 on at least one
dataset), at the low end because the base is a pretrained instruct LM whose
fluency a high lr can damage in few steps; the same lr for all three favours
none. With more time set ``lrs=(1e-3, 3e-3)``: the runner searches on seed 0
(by ROUGE-L, then dev loss) and reuses those cells as the seed-0 cells.
"""

from __future__ import annotations

import math

from bench.study_grid import FULL, DatasetPlan, Grid

STEPS = 120  # optimizer steps T per cell
BATCH = 4
MAX_LENGTH = 256  # tokens per example: prompt (cut in its middle) + lead + EOS
DEV_LOSS = 128  # dev examples in the dev loss / perplexity
GEN_SAMPLES = 64  # the first dev examples generated and scored with ROUGE
NEW_TOKENS = 48  # greedy tokens per sample
LR = 1e-3

# The measured costs above, in CPU seconds of one thread, and the two-at-once slowdown.
START_S, STEP_S, DEV_S, SAMPLE_S = 25.0, 11.3, 1.1, 1.9
PAIR_SLOWDOWN = 1.3

GENERATIVE = Grid(
    name="generative",
    datasets=(
        DatasetPlan(
            "bbc-summary",
            steps=STEPS,
            max_length=MAX_LENGTH,
            max_train=STEPS * BATCH,  # one pass: no example is seen twice
            max_dev=DEV_LOSS,
        ),
    ),
    budgets=(8,),
    seeds=(0, 1),
    lrs=(LR,),
    search_budget=8,
    search_seed=0,
    model="smollm2-135m",
    common={
        **FULL.common,  # the paper's schedule, alpha, dropout, pruning calendar, DEM weight
        "task": "causal-lm",
        "batch_size": BATCH,
        "max_gen_samples": GEN_SAMPLES,
        "max_new_tokens": NEW_TOKENS,
    },
)


def cell_seconds(grid: Grid = GENERATIVE) -> float:
    """Estimated wall seconds of one cell, two cells sharing an idle 2-core machine
    (generation scaled linearly from the 48-token measurement)."""
    plan, common = grid.datasets[0], grid.common
    cpu = START_S + STEP_S * plan.steps + DEV_S * plan.max_dev
    cpu += SAMPLE_S * common["max_gen_samples"] * common["max_new_tokens"] / 48
    return PAIR_SLOWDOWN * cpu


def grid_hours(grid: Grid = GENERATIVE, jobs: int = 2) -> float:
    """Estimated wall hours of the whole grid: waves of ``jobs`` cells at once."""
    cells = len(grid.methods) * len(grid.budgets) * len(grid.seeds)
    cells += len(grid.methods) * (len(grid.lrs) - 1)  # search cells of the lrs not chosen
    return math.ceil(cells / jobs) * cell_seconds(grid) / 3600
