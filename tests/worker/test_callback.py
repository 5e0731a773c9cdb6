"""The transformers Trainer integration on a tiny model: one tuner step per optimizer step."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainingArguments,
)

from dora_core import DoraConfig, inject
from dora_core.callbacks import DoraTrainer
from dora_core.worker.telemetry import Reporter, read_metrics
from tests.worker.conftest import sentiment_rows


def dataset(tokenizer, n: int, seed: int) -> list[dict]:
    rows = sentiment_rows(n, seed)
    enc = tokenizer([r["review"] for r in rows], truncation=True, max_length=16)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": int(r["sentiment"] == "pos")}
        for ids, mask, r in zip(enc["input_ids"], enc["attention_mask"], rows, strict=True)
    ]


def trainer_for(tiny_bert, tmp_path, total_steps: int, reporter=None, max_steps: int = 40):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    tuner = inject(model, DoraConfig(total_steps=total_steps, target_rank=2, prune_interval=2))
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=0.01,
        logging_steps=5,
        eval_strategy="steps",
        eval_steps=20,
        save_steps=20,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = DoraTrainer(
        model=model,
        args=args,
        train_dataset=dataset(tokenizer, 160, 0),
        eval_dataset=dataset(tokenizer, 32, 1),
        data_collator=DataCollatorWithPadding(tokenizer),
        tuner=tuner,
        reporter=reporter,
    )
    return trainer, tuner


def test_trainer_prunes_once_per_optimizer_step_and_reports(tiny_bert, tmp_path) -> None:
    reporter = Reporter(tmp_path / "run")
    trainer, tuner = trainer_for(tiny_bert, tmp_path, total_steps=40, reporter=reporter)
    trainer.train()  # closes the reporter at the end
    assert tuner.global_step == 40  # 40 optimizer steps of 2 micro-batches each
    assert tuner.frozen and tuner.compacted
    assert sum(tuner.rank_pattern().values()) == 2 * 12
    records = read_metrics(tmp_path / "run")
    prunes = [r for r in records if r["type"] == "event" and r["kind"] in ("prune", "mask_frozen")]
    t_i, t_f = math.floor(0.15 * 40 + 0.5), 20
    assert [r["step"] for r in prunes] == list(range(t_i, 40 - t_f + 1, 2))
    assert all(r["data"]["live"] == r["data"]["target"] for r in prunes)
    assert any("eval/loss" in r["values"] for r in records if r["type"] == "scalars")
    assert [r["kind"] for r in records if r["type"] == "event"][-1] == "finished"
    assert (tmp_path / "trainer" / "checkpoint-20" / "dora" / "dora_config.json").is_file()


def test_trainer_length_must_match_the_schedule(tiny_bert, tmp_path) -> None:
    trainer, _ = trainer_for(tiny_bert, tmp_path, total_steps=100, max_steps=10)
    with pytest.raises(ValueError, match="total_steps=10"):
        trainer.train()
