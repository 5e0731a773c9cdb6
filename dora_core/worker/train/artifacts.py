"""`dora export` and `dora merge`: ship what a run trained.

A finished run has its PEFT adapter in ``adapter/`` (and, for dora, the
tuner's own save in ``dora/``); a cancelled or crashed run has only
checkpoints, so both commands fall back to the newest checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from dora_core.contracts.job import JobConfig, JobConfigError, load_job_config
from dora_core.contracts.rundir import (
    ADAPTER_DIR,
    JOB_FILE,
    MODEL_DIR,
    RESULT_FILE,
    SPLIT_FILE,
)
from dora_core.contracts.wire import GENERATIVE_TASKS, METHODS
from dora_core.worker.models import auto_class, load_model, load_tokenizer, resolve_model
from dora_core.worker.train import checkpoint
from dora_core.worker.train.methods import METHOD_CLASSES, Method, build_method
from dora_core.worker.train.plan import resolve_method


def _run(run_dir: Path) -> tuple[JobConfig, list[str]]:
    if not (run_dir / JOB_FILE).is_file():
        raise JobConfigError([("", f"{run_dir} is not a run directory (no job.json)")])
    job = load_job_config(run_dir / JOB_FILE)
    split = run_dir / SPLIT_FILE
    if not split.is_file():
        raise JobConfigError([("", f"{run_dir} has no split.json; the run never started training")])
    return job, json.loads(split.read_text(encoding="utf-8"))["label_names"]


def _base(job: JobConfig, labels: list[str]) -> tuple[nn.Module, Any]:
    source = resolve_model(job.model)
    tokenizer = load_tokenizer(source, job.chat_template)
    model = load_model(source, len(labels), tokenizer.pad_token_id, labels, task=job.task)
    return model, tokenizer


def _from_checkpoint(run_dir: Path, job: JobConfig, labels: list[str]) -> tuple[Method, Any]:
    state = checkpoint.load_latest(run_dir)
    if state is None:
        raise JobConfigError(
            [("", f"{run_dir} has neither a final adapter nor a checkpoint; train it first")]
        )
    model, tokenizer = _base(job, labels)
    method = build_method(model, resolve_method(job, int(state["total_steps"])))
    method.load_state_dict(state["method"])
    return method, tokenizer


def _finished(run_dir: Path) -> bool:
    return (run_dir / RESULT_FILE).is_file()


def export_adapter(run_dir: Path, out: Path) -> Path:
    """The run's PEFT adapter folder at ``out`` (``PeftModel.from_pretrained(base, out)``)."""
    job, labels = _run(run_dir)
    if not METHODS[job.method].adapter:
        raise JobConfigError(
            [("method", "a full fine-tune has no adapter; use `dora merge` for the whole model")]
        )
    if _finished(run_dir) and (run_dir / ADAPTER_DIR).is_dir():
        shutil.copytree(run_dir / ADAPTER_DIR, out, dirs_exist_ok=True)
        return out
    method, tokenizer = _from_checkpoint(run_dir, job, labels)
    method.export_adapter(out)
    tokenizer.save_pretrained(out)
    return out


def trained_model(run_dir: Path) -> tuple[nn.Module, Any, list[str]]:
    """The run's model with its update folded in (finished or from the newest checkpoint),
    its tokenizer and label names."""
    job, labels = _run(run_dir)
    if _finished(run_dir):
        if not METHODS[job.method].adapter:  # the run saved the whole model
            tokenizer = load_tokenizer(resolve_model(job.model), job.chat_template)
            model = auto_class(job.task).from_pretrained(run_dir / MODEL_DIR)
            return model, tokenizer, labels
        model, tokenizer = _base(job, labels)
        return METHOD_CLASSES[job.method].merge_saved(model, run_dir), tokenizer, labels
    method, tokenizer = _from_checkpoint(run_dir, job, labels)
    return method.merged(), tokenizer, labels


def merge_model(run_dir: Path, out: Path) -> Path:
    """A plain transformers model folder with the update folded into the weights."""
    job, _ = _run(run_dir)
    if _finished(run_dir) and not METHODS[job.method].adapter:
        shutil.copytree(run_dir / MODEL_DIR, out, dirs_exist_ok=True)  # it is the merge
        return out
    merged, tokenizer, _ = trained_model(run_dir)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _require_task(run_dir: Path, generative: bool) -> JobConfig:
    """The run's job, or a one-line error when the run is of the other kind of task."""
    job, _ = _run(run_dir)
    if generative and job.task not in GENERATIVE_TASKS:
        raise JobConfigError(
            [
                (
                    "task",
                    f"{run_dir} is a classification run; use `dora predict {run_dir} --text ...`",
                )
            ]
        )
    if not generative and job.task in GENERATIVE_TASKS:
        raise JobConfigError(
            [("task", f"{run_dir} is a {job.task} run; use `dora generate {run_dir} --prompt ...`")]
        )
    return job


def predict(run_dir: Path, texts: list[str]) -> list[dict[str, Any]]:
    """Label and class probabilities of each text under the run's trained model."""
    import torch

    _require_task(run_dir, generative=False)
    model, tokenizer, labels = trained_model(run_dir)
    model.eval()
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        probs = torch.softmax(model(**batch).logits.float(), dim=-1)
    return [
        {
            "label": labels[int(row.argmax())],
            "probabilities": {
                name: round(float(p), 4) for name, p in zip(labels, row, strict=True)
            },
        }
        for row in probs
    ]


def generate(
    run_dir: Path,
    prompts: list[str] | None = None,
    messages: list[dict] | None = None,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Greedy completions from the run's trained model: of each prompt (tokenised as in
    training), or of a chat history rendered with the run's chat template."""
    import torch

    from dora_core.worker.gendata import GenDataError, chat_prompt
    from dora_core.worker.train.generation import generate_texts

    job = _require_task(run_dir, generative=True)
    model, tokenizer, _ = trained_model(run_dir)
    if messages is not None:
        try:
            prompts = [chat_prompt(messages, tokenizer)]
        except GenDataError as exc:
            raise JobConfigError([(exc.field, exc.message)]) from None
    causal = job.task == "causal-lm"
    ids = [
        list(tokenizer(p, truncation=not causal, max_length=job.max_length)["input_ids"])
        for p in prompts or []
    ]
    model.to(torch.device("cpu"))
    return generate_texts(
        model,
        ids,
        tokenizer,
        max_new_tokens=max_new_tokens or job.max_new_tokens,
        batch_size=8,
        device=torch.device("cpu"),
        causal=causal,
    )
