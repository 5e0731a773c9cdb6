"""Dev-set evaluation: accuracy and macro-F1 from predictions, and the eval pass itself."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm

from dora_core.worker.data import Encoded, collate, eval_batches
from dora_core.worker.train import ddp


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Share of predictions equal to the label."""
    if not labels:
        return 0.0
    return sum(int(p == y) for p, y in zip(preds, labels, strict=True)) / len(labels)


def macro_f1(preds: Sequence[int], labels: Sequence[int], num_labels: int) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN); a class with none of
    these (never predicted, never present) scores 0, as scikit-learn does by default."""
    scores = []
    for k in range(num_labels):
        tp = sum(1 for p, y in zip(preds, labels, strict=True) if p == k and y == k)
        fp = sum(1 for p, y in zip(preds, labels, strict=True) if p == k and y != k)
        fn = sum(1 for p, y in zip(preds, labels, strict=True) if p != k and y == k)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / num_labels if num_labels else 0.0


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dev: Encoded,
    num_labels: int,
    pad_id: int,
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """{"accuracy", "macro_f1", "loss"} on the dev set; under DDP each rank takes a stride
    of the examples and the predictions are gathered, so every rank gets the same numbers."""
    was_training = model.training
    model.eval()
    world, rank = ddp.world_size(), ddp.rank()
    indices, preds, losses = [], [], []
    lengths = [len(ids) for ids in dev.input_ids]
    batches = list(eval_batches(len(dev), batch_size, world, rank, lengths))
    for batch_idx in tqdm(
        batches,
        desc="evaluating",
        unit="batch",
        delay=2,
        leave=False,
        disable=not sys.stderr.isatty(),
    ):
        batch = {k: v.to(device) for k, v in collate(dev, batch_idx, pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="none")
        indices += batch_idx
        preds += logits.argmax(-1).tolist()
        losses += loss.tolist()
    model.train(was_training)
    rows = ddp.gather_lists(list(zip(indices, preds, losses, strict=True)))
    rows.sort()
    preds = [p for _, p, _ in rows]
    labels = [dev.labels[i] for i, _, _ in rows]
    return {
        "accuracy": accuracy(preds, labels),
        "macro_f1": macro_f1(preds, labels, num_labels),
        "loss": sum(loss for _, _, loss in rows) / max(1, len(rows)),
    }
