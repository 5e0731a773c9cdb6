"""Generative dev evaluation: token loss and perplexity, greedy samples, ROUGE.

The dev loss is the mean cross-entropy per target token over the whole dev
set (every token weighs the same, however the batches fall), and perplexity
is its exponential. Samples are generated greedily from the first
``max_samples`` dev examples' prompts (the same truncated prompt the model
trained on) and scored with ROUGE-1/2/L F1 against each example's reference.
Under DDP every rank takes a stride of the examples and the sums / samples
are gathered, so every rank gets the same numbers.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from dora_core.contracts.rundir import SAMPLES_FILE, read_lines
from dora_core.worker.data import eval_batches
from dora_core.worker.gendata import IGNORE, GenEncoded, GenExample, collate_generative
from dora_core.worker.rouge import rouge
from dora_core.worker.train import ddp


def _bar(items: list, desc: str) -> Any:
    return tqdm(
        items, desc=desc, unit="batch", delay=2, leave=False, disable=not sys.stderr.isatty()
    )


def token_loss_sums(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[float, int]:
    """(sum of cross-entropy over target tokens, number of target tokens) of one batch; a
    causal LM's logits at position t predict token t + 1."""
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    loss = nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return float(loss), int((labels != IGNORE).sum())


@torch.no_grad()
def dev_loss(
    model: nn.Module,
    dev: GenEncoded,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    causal: bool,
) -> float:
    """Mean cross-entropy per target token over the dev set."""
    world, rank = ddp.world_size(), ddp.rank()
    lengths = [len(ids) for ids in dev.input_ids]
    total, count = 0.0, 0
    for indices in _bar(eval_batches(len(dev), batch_size, world, rank, lengths), "dev loss"):
        batch = {k: v.to(device) for k, v in collate_generative(dev, indices, pad_id).items()}
        if causal:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        else:  # the model shifts the labels into its decoder inputs
            out = model(**batch)
        s, n = token_loss_sums(out.logits, batch["labels"], causal)
        total, count = total + s, count + n
    sums = ddp.gather_lists([(total, count)])
    total, count = sum(s for s, _ in sums), sum(n for _, n in sums)
    return total / count if count else 0.0


def left_pad(prompts: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts padded on the left (generation continues from every row's last token)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for j, p in enumerate(prompts):
        if p:
            ids[j, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[j, width - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def generate_texts(
    model: nn.Module,
    prompts: Sequence[list[int]],
    tokenizer: Any,
    *,
    max_new_tokens: int,
    batch_size: int,
    device: torch.device,
    causal: bool,
) -> list[str]:
    """Greedy continuations of token-id prompts, decoded without special tokens."""
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id
    texts: list[str] = []
    chunks = [list(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    for chunk in _bar(chunks, "generating"):
        if causal:
            ids, mask = left_pad(chunk, pad_id)
        else:
            ids = collate_generative(GenEncoded(chunk, chunk, []), range(len(chunk)), pad_id)
            ids, mask = ids["input_ids"], ids["attention_mask"]
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
        )
        new = out[:, ids.shape[1] :] if causal else out
        texts += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    model.train(was_training)
    return texts


@torch.no_grad()
def evaluate_generative(
    model: nn.Module,
    dev: GenEncoded,
    examples: Sequence[GenExample],
    tokenizer: Any,
    *,
    batch_size: int,
    device: torch.device,
    causal: bool,
    samples: int,
    max_new_tokens: int,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """({"loss", "perplexity"[, "rouge1", "rouge2", "rougeL"]}, the samples generated).
    ``samples = 0`` skips generation."""
    was_training = model.training
    model.eval()
    loss = dev_loss(model, dev, tokenizer.pad_token_id, batch_size, device, causal)
    metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    rows: list[dict[str, str]] = []
    if samples:
        mine = list(range(ddp.rank(), min(samples, len(dev)), ddp.world_size()))
        texts = generate_texts(
            model,
            [dev.prompt(i) for i in mine],
            tokenizer,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            device=device,
            causal=causal,
        )
        done = sorted(ddp.gather_lists(list(zip(mine, texts, strict=True))))
        rows = [
            {
                "prompt": examples[i].prompt,
                "reference": examples[i].target,
                "prediction": text,
            }
            for i, text in done
        ]
        metrics.update(rouge([r["prediction"] for r in rows], [r["reference"] for r in rows]))
    model.train(was_training)
    return metrics, rows


# A sample's texts as sent to the API (the run dir's samples.jsonl keeps them whole).
SAMPLE_CHARS = 2000


def clip_sample(row: dict[str, str], limit: int = SAMPLE_CHARS) -> dict[str, str]:
    """The sample with each text cut to ``limit`` characters (a long prompt keeps its end,
    next to the completion)."""
    out = dict(row)
    for key, text in row.items():
        if isinstance(text, str) and len(text) > limit:
            out[key] = (
                "…" + text[len(text) - limit + 1 :] if key == "prompt" else text[: limit - 1] + "…"
            )
    return out


def write_samples(run_dir: Path, step: int, rows: list[dict[str, str]]) -> None:
    """Append one evaluation's samples to samples.jsonl; lines of this step or later (left
    by a run that crashed after them and resumed from an earlier checkpoint) go first."""
    path = Path(run_dir) / SAMPLES_FILE
    kept = [line for line in read_lines(path) if json.loads(line)["step"] < step]
    lines = kept + [json.dumps({"step": step, **row}, ensure_ascii=False) for row in rows]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)
