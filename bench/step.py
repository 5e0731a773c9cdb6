"""Optimizer-step time: DoRA vs PEFT LoRA and PEFT AdaLoRA, classification or causal-lm.

One step = forward + loss (+ regulariser) + backward + grad clip + AdamW step
+ the method's per-step work (DoRA: tuner.step(); AdaLoRA:
update_and_allocate()) + zero_grad. The same sequence of batches for every
method: ``--task classification`` (default): MiniLM, 16 real Rotten Tomatoes
snippets per batch, padded to the longest; ``--task causal-lm``: SmolLM2-135M,
4 bbc-summary examples of 256 tokens (prompt + lead, loss on the lead only). Runs are interleaved (each round runs every method for a few steps,
in a rotating order) and reported as medians of wall time and of the
process's CPU time (less sensitive to other jobs on a shared machine); the
verdict needs both ratios of medians within the target.

    .venv/bin/python bench/step.py [--task causal-lm] [--rounds 12] [--steps 3] [--threads N]

Methods, all on the same projections (MiniLM: the 36 query/key/value/
attention.output/intermediate/output dense, with the classifier trained fully;
SmolLM2: the 210 q/k/v/o/gate/up/down projections, the LM head frozen):
  dora-pruning  r' = 12, inside the pruning phase (EMA every step, an event every 10)
  dora-frozen   after the mask froze at b(T) = 8 and the layers were compacted
  lora-r12      PEFT LoRA at r = r' = 12
  lora-r8       PEFT LoRA at r = b(T) = 8
  adalora       PEFT AdaLoRA init_r = 12, target_r = 8, inside its budgeting phase

Memory: the trainable parameters and their AdamW state per method (exact; the
frozen base and the activations are the same for every method).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dora_core import DoraConfig, inject
from dora_core.contracts.presets import DATASETS, MODELS
from dora_core.targets import DEFAULT_TARGETS

R_INIT, R_TARGET, ALPHA, DROPOUT, LR = 12, 8, 8.0, 0.1, 5e-4
BATCH, LM_BATCH, LM_TOKENS = 16, 4, 256


class Setup:
    """The task's model, batches, adapted projections and fully trained heads."""

    def __init__(self, task: str):
        self.task = task
        self.targets = DEFAULT_TARGETS["bert" if task == "classification" else "llama"]
        self.heads = ["classifier"] if task == "classification" else None

    def batches(self, count: int) -> list[dict[str, torch.Tensor]]:
        return load_batches(count) if self.task == "classification" else lm_batches(count)

    def model(self):
        return base_model() if self.task == "classification" else lm_model()


def lm_model():
    from dora_core.worker.models import load_model, load_tokenizer, resolve_model

    source = resolve_model("smollm2-135m")  # the cached float copy of the GGUF preset
    torch.manual_seed(0)
    pad = load_tokenizer(source).pad_token_id
    return load_model(source, 0, pad, task="causal-lm").train()


def lm_batches(count: int) -> list[dict[str, torch.Tensor]]:
    """bbc-summary examples cut to exactly LM_TOKENS tokens (no padding)."""
    from dora_core.worker.data import preset_path
    from dora_core.worker.gendata import bbc_summary, collate_generative, encode_causal
    from dora_core.worker.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("smollm2-135m"))
    examples = [ex for ex in bbc_summary(preset_path("bbc-summary"))]
    enc = encode_causal(examples[: count * LM_BATCH * 2], tokenizer, LM_TOKENS)
    full = [i for i in range(len(enc)) if len(enc.input_ids[i]) == LM_TOKENS]
    rows = full[: count * LM_BATCH]
    return [
        collate_generative(enc, rows[i : i + LM_BATCH], tokenizer.pad_token_id)
        for i in range(0, len(rows), LM_BATCH)
    ]


def state_bytes(runner: Runner) -> int:
    """Trainable parameters + AdamW's two moments, in bytes (after a step)."""
    params = sum(p.numel() * p.element_size() for p in runner.params)
    return 3 * params


def load_batches(count: int) -> list[dict[str, torch.Tensor]]:
    from transformers import AutoTokenizer

    path = DATASETS["rt-snippets"].path()
    if path is None:
        sys.exit(f"rt-snippets missing: {DATASETS['rt-snippets'].install_hint}")
    with open(path, encoding="utf-8", errors="replace") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1 : count * BATCH + 1]
    tokenizer = AutoTokenizer.from_pretrained(MODELS["minilm"].path())
    batches = []
    for i in range(0, len(rows), BATCH):
        chunk = rows[i : i + BATCH]
        enc = tokenizer(
            [r[2] for r in chunk],
            padding=True,
            truncation=True,
            max_length=128,
            return_tensors="pt",
        )
        enc["labels"] = torch.tensor([int(float(r[1]) > 0) for r in chunk])
        batches.append(dict(enc))
    return batches


def base_model():
    from transformers import AutoModelForSequenceClassification

    path = MODELS["minilm"].path()
    if path is None:
        sys.exit(f"minilm missing: {MODELS['minilm'].install_hint}")
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).train()


class Runner:
    """A model, its optimizer and the method's own per-step hook."""

    def __init__(self, model, params, loss_extra=None, after_step=None):
        self.model = model
        self.params = [p for p in params if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=LR, weight_decay=0.01)
        self.loss_extra: Callable[[], torch.Tensor] | None = loss_extra
        self.after_step = after_step
        self.steps = 0
        self.step_peak = 0  # bytes a step allocated beyond what was resident (CUDA only)

    # Where steps run and the forward's autocast dtype (--device, --precision): as the
    # worker trains, the forward under autocast, adapters and optimizer state in fp32.
    device = torch.device("cpu")
    autocast_dtype: torch.dtype | None = None

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            resident = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        dtype = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            loss = self.model(**batch).loss
        if self.loss_extra is not None:
            loss = loss + self.loss_extra()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.steps += 1
        if self.after_step is not None:
            self.after_step(self)
        self.opt.zero_grad(set_to_none=True)
        if cuda:  # the step's time includes its GPU work
            torch.cuda.synchronize()
            self.step_peak = max(self.step_peak, torch.cuda.max_memory_allocated() - resident)


def dora(
    setup: Setup, total_steps: int, warmup_frac: float, final_frac: float, interval: int
) -> Runner:
    model = setup.model()
    cfg = DoraConfig(
        total_steps=total_steps,
        target_rank=R_TARGET,
        init_rank=R_INIT,
        alpha=ALPHA,
        dropout=DROPOUT,
        warmup_frac=warmup_frac,
        final_frac=final_frac,
        prune_interval=interval,
        target_modules=setup.targets,
        modules_to_save=setup.heads or [],
    )
    tuner = inject(model, cfg)
    runner = Runner(model, tuner.parameters(), tuner.regularization)
    runner.after_step = lambda r: tuner.step(r.opt)
    runner.tuner = tuner
    return runner


def lora(setup: Setup, rank: int) -> Runner:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=rank,
        lora_alpha=ALPHA,
        lora_dropout=DROPOUT,
        target_modules=setup.targets,
        modules_to_save=setup.heads,
    )
    model = get_peft_model(setup.model(), cfg)
    return Runner(model, model.parameters())


def adalora(setup: Setup) -> Runner:
    from peft import AdaLoraConfig, get_peft_model

    cfg = AdaLoraConfig(
        init_r=R_INIT,
        target_r=R_TARGET,
        lora_alpha=ALPHA,
        lora_dropout=DROPOUT,
        target_modules=setup.targets,
        modules_to_save=setup.heads,
        total_step=100_000,
        tinit=0,
        tfinal=50_000,
        deltaT=10,
    )
    model = get_peft_model(setup.model(), cfg)
    runner = Runner(model, model.parameters())
    runner.after_step = lambda r: model.base_model.update_and_allocate(r.steps)
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method per round")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the steps run (cuda: each step synchronised; step memory measured)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="the forward under autocast in this dtype (adapters, optimizer state stay fp32)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the medians here (bench/gpu.py)"
    )
    parser.add_argument(
        "--task",
        choices=["classification", "causal-lm"],
        default="classification",
        help="MiniLM on rt-snippets, or SmolLM2-135M on bbc-summary",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/step.py: --device cuda, but torch finds no CUDA device here")
    Runner.device = torch.device(args.device)
    Runner.autocast_dtype = torch.bfloat16 if args.precision == "bf16" else None
    setup = Setup(args.task)
    pool = setup.batches(24 if args.task == "classification" else 8)
    shape = "x".join(str(n) for n in pool[0]["input_ids"].shape)
    model_name = "MiniLM" if args.task == "classification" else "SmolLM2-135M (causal-lm)"
    print(
        f"{model_name}, batches {shape}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    runners = {
        # Pruning phase from step 0 to 50k: EMA every step, an event every 10 steps.
        "dora-pruning": dora(setup, 100_000, 0.0, 0.5, 10),
        # Mask frozen at step 10 (t_i 3, events every 2 steps), then compacted.
        "dora-frozen": dora(setup, 20, 0.15, 0.5, 2),
        "lora-r12": lora(setup, R_INIT),
        "lora-r8": lora(setup, R_TARGET),
        "adalora": adalora(setup),
    }
    if Runner.device.type != "cpu":  # built on the CPU; AdamW has no state yet
        for runner in runners.values():
            runner.model.to(Runner.device)
        pool = [{k: v.to(Runner.device) for k, v in batch.items()} for batch in pool]
    for name, runner in tqdm(runners.items(), desc="warm-up"):
        warm = 12 if name == "dora-frozen" else 3
        for i in range(warm):
            runner.step(pool[i % len(pool)])
    frozen = runners["dora-frozen"].tuner
    assert frozen.compacted, "dora-frozen should be compacted after its warm-up"
    live = sum(frozen.rank_pattern().values())
    print(
        f"dora-frozen: {live} live components over {len(frozen.layers)} layers (b(T) = {live / len(frozen.layers):g})"
    )

    names = list(runners)
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    # times[clock][method]: every timed step; per_round[clock][method]: mean per round
    times = {c: {name: [] for name in names} for c in clocks}
    per_round = {c: {name: [] for name in names} for c in clocks}
    cursor = 0
    for rnd in tqdm(range(args.rounds), desc="rounds"):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            samples: dict[str, list[float]] = {c: [] for c in clocks}
            for _ in range(args.steps):
                batch = pool[cursor % len(pool)]
                cursor += 1
                start = {c: clock() for c, clock in clocks.items()}
                runners[name].step(batch)
                for c, clock in clocks.items():
                    samples[c].append(clock() - start[c])
            for c in clocks:
                times[c][name] += samples[c]
                per_round[c][name].append(statistics.mean(samples[c]))

    median = {c: {n: statistics.median(v) for n, v in times[c].items()} for c in clocks}
    print(
        f"\n{'method':14} {'wall (median)':>14} {'CPU (median)':>14} {'steps timed':>12} "
        f"{'trainable + AdamW':>18}"
    )
    for name in names:
        print(
            f"{name:14} {median['wall'][name] * 1e3:11.1f} ms {median['cpu'][name] * 1e3:11.1f} ms "
            f"{len(times['wall'][name]):12d} {state_bytes(runners[name]) / 2**20:15.2f} MiB"
        )

    if args.json is not None:
        task = getattr(args, "task", "classification")
        summary = {
            "task": task,
            "model": "MiniLM" if task == "classification" else "SmolLM2-135M",
            "device": args.device,
            "precision": args.precision,
            "batch_shape": "x".join(str(n) for n in pool[0]["input_ids"].shape),
            "torch": torch.__version__,
            "methods": {
                name: {
                    "wall_ms": median["wall"][name] * 1e3,
                    "cpu_ms": median["cpu"][name] * 1e3,
                    "steps": len(times["wall"][name]),
                    # trainable parameters and AdamW's two moments
                    "state_mib": 3
                    * sum(p.numel() * p.element_size() for p in runners[name].params)
                    / 2**20,
                    "peak_mib": runners[name].step_peak / 2**20 if args.device == "cuda" else None,
                }
                for name in names
            },
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    # DoRA's own per-step work, timed alone (no model forward/backward).
    tuner = runners["dora-pruning"].tuner

    def timed(fn: Callable[[], object], repeats: int = 40) -> float:
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    dem = timed(lambda: tuner.regularization().backward())
    runners["dora-pruning"].opt.zero_grad(set_to_none=True)
    own = timed(tuner.step)  # pruning phase: EMA every call, an event every 10th
    share = (dem + own) / median["wall"]["dora-pruning"]
    print(
        f"\nDoRA's own work per step: DEM forward+backward {dem * 1e3:.2f} ms, "
        f"tuner.step() {own * 1e3:.2f} ms ({share:.1%} of the median dora-pruning step)"
    )

    checks = [
        ("dora-pruning", "lora-r12", 1.10),
        ("dora-frozen", "lora-r8", 1.05),
        ("dora-pruning", "adalora", 1.00),
    ]
    print(
        f"\n{'ratio':28} {'wall: medians':>13} {'per round':>10} "
        f"{'CPU: medians':>13} {'per round':>10} {'target':>8}"
    )
    for a, b, target in checks:
        cells = []
        for c in clocks:
            ratio = median[c][a] / median[c][b]
            pair = statistics.median(
                x / y for x, y in zip(per_round[c][a], per_round[c][b], strict=True)
            )
            cells += [ratio, pair]
        verdict = "met" if max(cells[0], cells[2]) <= target else "MISSED"
        print(
            f"{a + ' / ' + b:28} {cells[0]:13.3f} {cells[1]:10.3f} {cells[2]:13.3f} "
            f"{cells[3]:10.3f} {'<= ' + str(target):>8} {verdict}"
        )


if __name__ == "__main__":
    main()
