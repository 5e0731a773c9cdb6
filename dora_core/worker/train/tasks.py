"""What a job's task changes in a run: tokens, the model's head, the loss's targets, evaluation.

The loop, the methods and the telemetry are the same for every task; a
``Task`` turns the plan's split into token ids, loads the right model
(classifier or LM), batches, and evaluates the dev set into metrics, a log
line and (generative) samples. ``build_task`` is the only place the task
name picks code.

- ``classification``: labels are class ids; dev accuracy, macro-F1 and loss;
  the best step is the best accuracy.
- ``causal-lm`` / ``seq2seq``: labels are target tokens (see ``gendata``);
  dev loss and perplexity at every evaluation, greedy samples and ROUGE
  every ``generate_every`` steps and at the end; the best step is the best
  ROUGE-L (the lowest loss for plain-text language modelling, which has no
  prompts to continue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from dora_core.contracts.wire import BEST_METRIC
from dora_core.worker import gendata
from dora_core.worker.data import collate, encode
from dora_core.worker.models import load_model
from dora_core.worker.train.evaluation import evaluate
from dora_core.worker.train.generation import evaluate_generative
from dora_core.worker.train.plan import Plan, device_kind
from dora_core.worker.train.precision import base_dtype


@dataclass
class Evaluation:
    metrics: dict[str, float]
    summary: str  # one line for the log and the dashboard's event list
    samples: list[dict[str, str]] = field(default_factory=list)  # generative only


class Task:
    """One task's data, model and evaluation for a plan (``train``/``dev`` are encoded)."""

    name: ClassVar[str]
    train: Any
    dev: Any

    def __init__(self, plan: Plan, tokenizer: Any):
        self.plan, self.tokenizer = plan, tokenizer
        self.pad_id: int = tokenizer.pad_token_id

    @property
    def best_key(self) -> str:
        """The dev metric that picks the best step."""
        return BEST_METRIC[self.name]

    @property
    def higher_is_better(self) -> bool:
        return True

    def improved(self, metrics: dict[str, float], best: dict | None) -> bool:
        if self.best_key not in metrics:
            return False
        if best is None or best.get("key") != f"eval/{self.best_key}":
            return True
        value = metrics[self.best_key]
        return value > best["value"] if self.higher_is_better else value < best["value"]

    def load_model(self) -> nn.Module:
        raise NotImplementedError

    @property
    def base_dtype(self) -> torch.dtype | None:
        """The dtype the frozen base is loaded in (bf16/fp16 on CUDA; None: as stored)."""
        plan = self.plan
        return base_dtype(plan.precision, device_kind(plan.device), plan.method.name)

    def collate(self, data: Any, indices: list[int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate(
        self, model: nn.Module, device: torch.device, step: int, final: bool
    ) -> Evaluation:
        raise NotImplementedError


class ClassificationTask(Task):
    name = "classification"

    def __init__(self, plan: Plan, tokenizer: Any):
        super().__init__(plan, tokenizer)
        self.train = encode(plan.split.train, tokenizer, plan.max_length)
        self.dev = encode(plan.split.dev, tokenizer, plan.max_length)

    def load_model(self) -> nn.Module:
        names = self.plan.split.train.label_names
        return load_model(self.plan.source, len(names), self.pad_id, names, dtype=self.base_dtype)

    def collate(self, data: Any, indices: list[int]) -> dict[str, torch.Tensor]:
        return collate(data, indices, self.pad_id)

    def evaluate(
        self, model: nn.Module, device: torch.device, step: int, final: bool
    ) -> Evaluation:
        m = evaluate(
            model,
            self.dev,
            len(self.plan.split.train.label_names),
            self.pad_id,
            self.plan.batch_size * 2,
            device,
        )
        return Evaluation(
            m, f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, loss {m['loss']:.4f}"
        )


class GenerativeTask(Task):
    """causal-lm and seq2seq: the same evaluation, a different encoding and model class."""

    causal: ClassVar[bool]

    def __init__(self, plan: Plan, tokenizer: Any):
        super().__init__(plan, tokenizer)
        self.dev_examples: list[gendata.GenExample] = plan.split.dev.examples
        self.train = self._encode(plan.split.train.examples)
        self.dev = self._encode(self.dev_examples)
        # Plain text has no prompts to continue: nothing to generate, the loss picks the best.
        self.generates = any(ex.prompt for ex in self.dev_examples)

    def _encode(self, examples: list[gendata.GenExample]) -> gendata.GenEncoded:
        raise NotImplementedError

    @property
    def best_key(self) -> str:
        return BEST_METRIC[self.name] if self.generates else "loss"

    @property
    def higher_is_better(self) -> bool:
        return self.generates

    def load_model(self) -> nn.Module:
        return load_model(self.plan.source, 0, self.pad_id, task=self.name, dtype=self.base_dtype)

    def collate(self, data: Any, indices: list[int]) -> dict[str, torch.Tensor]:
        return gendata.collate_generative(data, indices, self.pad_id)

    def generates_at(self, step: int, final: bool) -> bool:
        every = self.plan.generation.every
        return self.generates and (final or (every is not None and step % every == 0))

    def evaluate(
        self, model: nn.Module, device: torch.device, step: int, final: bool
    ) -> Evaluation:
        gen = self.plan.generation
        samples = min(gen.max_samples, len(self.dev)) if self.generates_at(step, final) else 0
        m, rows = evaluate_generative(
            model,
            self.dev,
            self.dev_examples,
            self.tokenizer,
            batch_size=self.plan.batch_size * 2,
            device=device,
            causal=self.causal,
            samples=samples,
            max_new_tokens=gen.max_new_tokens,
        )
        line = f"loss {m['loss']:.4f}, perplexity {m['perplexity']:.2f}"
        if "rougeL" in m:
            line += (
                f", ROUGE-1/2/L {m['rouge1']:.4f} / {m['rouge2']:.4f} / {m['rougeL']:.4f} "
                f"on {len(rows)} samples"
            )
        return Evaluation(m, line, rows)


class CausalLmTask(GenerativeTask):
    name = "causal-lm"
    causal = True

    def _encode(self, examples: list[gendata.GenExample]) -> gendata.GenEncoded:
        return gendata.encode_causal(
            examples, self.tokenizer, self.plan.max_length, self.plan.generation.train_on_prompt
        )


class Seq2SeqTask(GenerativeTask):
    name = "seq2seq"
    causal = False

    def _encode(self, examples: list[gendata.GenExample]) -> gendata.GenEncoded:
        return gendata.encode_seq2seq(examples, self.tokenizer, self.plan.max_length)


TASK_CLASSES: dict[str, type[Task]] = {
    cls.name: cls for cls in (ClassificationTask, CausalLmTask, Seq2SeqTask)
}


def build_task(plan: Plan, tokenizer: Any) -> Task:
    """The task object for ``plan`` (tokenises its split)."""
    return TASK_CLASSES[plan.task](plan, tokenizer)
