"""A job resolved once into a Plan, with everything that can be wrong checked first.

``prepare`` turns a JobConfig into a Plan (data split, model source, the
method with its settings and T, the optimiser, the evaluation, checkpoint
and reporting cadence, the run directory) or raises JobConfigError naming
the field and the fix: presets that are not installed, missing files and
columns, targets that match nothing, a schedule with no pruning phase at
this run length, a max_length beyond the model's positions, a run directory
already in use. The static rules (types, ranges, budget vs start rank) are
the job config's. The loop, the methods and the reporting read the plan,
never the raw job.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dora_core.config import DoraConfig
from dora_core.contracts.job import JobConfig, JobConfigError
from dora_core.contracts.rundir import CHECKPOINTS_DIR, METRICS_FILE
from dora_core.contracts.wire import METHODS, start_rank
from dora_core.worker.data import BatchPlan, Split, given_split, load_dataset, make_split
from dora_core.worker.models import (
    ModelSource,
    auto_class,
    load_config,
    load_tokenizer,
    resolve_model,
)
from dora_core.worker.train import ddp
from dora_core.worker.train.precision import resolve_precision

_FIELD = re.compile(r"^(\w+): (.*)$", re.S)


@dataclass(frozen=True)
class MethodPlan:
    """What a method needs to build itself: its name, T and the job's DoRA settings."""

    name: str
    total_steps: int  # T, optimizer steps
    settings: dict[str, Any]  # DoraConfig fields set by the job (JobConfig.dora_settings())
    task: str = "classification"  # the exported adapter's PEFT task type follows it

    @property
    def target_rank(self) -> int:
        return int(self.settings["target_rank"])

    @property
    def start_rank(self) -> int | None:
        """r': b(T) for LoRA, init_rank or ceil(1.5 b(T)) for a pruning method, None for full."""
        return start_rank(self.name, self.target_rank, self.settings["init_rank"])

    def dora_config(self) -> DoraConfig:
        """The library config at this run's T (raises ValueError naming a field)."""
        return DoraConfig(total_steps=self.total_steps, **self.settings)


@dataclass(frozen=True)
class OptimPlan:
    """AdamW and its learning-rate schedule."""

    lr: float
    head_lr: float | None  # the task head's own peak rate; None: lr
    weight_decay: float
    scheduler: str  # a transformers scheduler name
    warmup_steps: int
    grad_clip: float | None


@dataclass(frozen=True)
class GenerationPlan:
    """Generative tasks: what the dev evaluation generates, and the prompt tokens' loss."""

    every: int | None  # optimizer steps between generations (None: only at the end)
    max_samples: int
    max_new_tokens: int
    train_on_prompt: bool


@dataclass(frozen=True)
class Plan:
    """One run, fully resolved."""

    name: str  # shown in the dashboard and the logs
    record: dict[str, Any]  # the job as JSON: job.json and the API's copy
    run_dir: Path
    split: Split
    source: ModelSource
    method: MethodPlan
    optim: OptimPlan
    seed: int
    max_length: int
    batch_size: int  # examples per micro-batch
    grad_accum: int  # micro-batches per optimizer step
    eval_every: int
    checkpoint_every: int
    report_every: int
    device: str  # the job's: auto / cpu / cuda / mps
    task: str = "classification"
    precision: str = "fp32"  # resolved for the device: fp32 / bf16 / fp16 (precision.py)
    gradient_checkpointing: bool = False
    generation: GenerationPlan = GenerationPlan(None, 0, 1, False)
    chat_template: str | None = None  # the job's, when the tokenizer has none

    @property
    def total_steps(self) -> int:
        return self.method.total_steps

    @property
    def num_labels(self) -> int:
        """Classes of a classification run (0 for a generative one)."""
        return len(self.split.train.label_names)


SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def resolve_method(job: JobConfig, total_steps: int) -> MethodPlan:
    """The method part of the plan (also what export and merge rebuild from a checkpoint)."""
    return MethodPlan(job.method, total_steps, job.dora_settings(), job.task)


def field_error(exc: ValueError, default_field: str) -> JobConfigError:
    """A library ValueError "field: message" as a JobConfigError for that field."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = _FIELD.match(text)
    if match and match.group(1) in JobConfig.model_fields:
        return JobConfigError([(match.group(1), match.group(2))])
    return JobConfigError([(default_field, text)])


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def device_kind(device: str) -> str:
    """cpu / cuda / mps: the job's ``device`` with auto resolved (CUDA, else mps for a
    single process, else CPU). Whether a named device exists is ``check_device``'s."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if not ddp.launched() and mps_available():
        return "mps"
    return "cpu"


def check_device(device: str) -> None:
    """A one-line JobConfigError when the job names a device this machine lacks."""
    if device == "cuda" and not torch.cuda.is_available():
        raise JobConfigError([("device", "cuda is not available on this machine; use auto or cpu")])
    if device == "mps" and not mps_available():
        raise JobConfigError([("device", "mps is not available on this machine; use auto or cpu")])
    if device == "mps" and ddp.launched():
        raise JobConfigError(
            [("device", "mps trains in one process; run it without torchrun, or use cpu")]
        )


def default_run_dir(job: JobConfig) -> Path:
    root = Path(os.environ.get("DORA_DATA_DIR", "data"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^\w.-]+", "-", job.display_name).strip("-") or "run"
    return root / "runs" / f"{safe}-{stamp}"


def run_in_use(run_dir: Path) -> bool:
    """A run started here already (it wrote checkpoints or telemetry)."""
    metrics = run_dir / METRICS_FILE
    return (run_dir / CHECKPOINTS_DIR).is_dir() or (metrics.exists() and metrics.stat().st_size > 0)


def count_steps(job: JobConfig, num_train: int, world_size: int) -> int:
    """T: max_steps, or ceil(epochs * micro-batches per epoch / grad_accum)."""
    if job.max_steps is not None:
        return job.max_steps
    micro = BatchPlan(num_train, job.batch_size, job.seed, world_size).per_epoch
    return max(1, math.ceil(job.epochs * micro / job.grad_accum))


def _check_model(job: JobConfig, source: ModelSource, num_labels: int) -> None:
    try:
        config = load_config(source)
    except (OSError, ValueError) as exc:
        raise JobConfigError(
            [
                (
                    "model",
                    f"cannot read the model config from {source.location}: {str(exc).splitlines()[0]}",
                )
            ]
        ) from None
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and job.max_length > limit:
        raise JobConfigError(
            [
                (
                    "max_length",
                    f"{job.max_length} is more than the model's {limit} positions; set max_length <= {limit}",
                )
            ]
        )
    if job.task == "classification":
        config.num_labels = num_labels
    try:
        with torch.device("meta"):  # the module tree only, no weights
            skeleton = auto_class(job.task).from_config(config)
    except ValueError as exc:
        raise JobConfigError(
            [
                (
                    "model",
                    f"{job.model} ({config.model_type}) cannot be loaded for task {job.task}: "
                    f"{str(exc).splitlines()[0][:200]}",
                )
            ]
        ) from None
    if not METHODS[job.method].adapter:
        return
    from dora_core.targets import find_targets

    try:
        find_targets(skeleton, job.target_modules)
    except ValueError as exc:
        raise field_error(exc, "target_modules") from None


def _check_schedule(spec: MethodPlan) -> None:
    """A pruning method's DoraConfig at this T: the one place the phase rule is checked."""
    if not METHODS[spec.name].prunes:
        return
    total_steps = spec.total_steps
    try:
        spec.dora_config()
    except ValueError as exc:
        error = field_error(exc, "max_steps")
        field, msg = error.errors[0]
        raise JobConfigError(
            [(field, f"{msg} (this job has T = {total_steps} optimizer steps)")]
        ) from None


def prepare(
    job: JobConfig,
    run_dir: Path | None = None,
    *,
    resume: bool = False,
    world_size: int = 1,
    report_every: int | None = None,
    given: tuple[Any, Any | None] | None = None,
) -> Plan:
    """Check the job against this machine and resolve the run; raises JobConfigError.
    ``report_every`` overrides the job's (the launcher's ``--report-every``); ``given``,
    the Python API's own (train, dev) tables, replaces the job's dataset and its split."""
    run_dir = Path(run_dir or job.output_dir or default_run_dir(job))
    if not resume and run_in_use(run_dir):
        raise JobConfigError(
            [
                (
                    "output_dir",
                    f"{run_dir} already holds a run; continue it with `dora train --resume {run_dir}` or choose another output_dir",
                )
            ]
        )
    check_device(job.device)
    precision = resolve_precision(job.precision, device_kind(job.device))
    source = resolve_model(job.model)
    split = _split(job, load_data(job, source)) if given is None else _given_split(job, *given)
    if not len(split.dev):
        raise JobConfigError(
            [("dev_fraction", "the dev split is empty; raise dev_fraction or use more data")]
        )
    if world_size > 1 and len(split.train) < job.batch_size * world_size:
        raise JobConfigError(
            [
                (
                    "batch_size",
                    f"{len(split.train)} training examples cannot fill one batch of {job.batch_size} on each of {world_size} processes; lower batch_size",
                )
            ]
        )
    _check_model(job, source, len(split.train.label_names))
    total_steps = count_steps(job, len(split.train), world_size)
    spec = resolve_method(job, total_steps)
    _check_schedule(spec)
    eval_every = job.eval_every or max(1, total_steps // 10)
    return Plan(
        name=job.display_name,
        record=job.model_dump(mode="json"),
        run_dir=run_dir,
        split=split,
        source=source,
        method=spec,
        optim=OptimPlan(
            lr=job.lr,
            head_lr=job.head_lr,
            weight_decay=job.weight_decay,
            scheduler=SCHEDULERS[job.lr_scheduler],
            warmup_steps=round(job.warmup_ratio * total_steps),
            grad_clip=job.grad_clip,
        ),
        seed=job.seed,
        max_length=job.max_length,
        batch_size=job.batch_size,
        grad_accum=job.grad_accum,
        eval_every=eval_every,
        checkpoint_every=job.checkpoint_every or eval_every,
        report_every=report_every or job.report_every,
        device=job.device,
        task=job.task,
        precision=precision,
        gradient_checkpointing=job.gradient_checkpointing,
        generation=GenerationPlan(
            every=job.generate_every,
            max_samples=job.max_gen_samples,
            max_new_tokens=job.max_new_tokens,
            train_on_prompt=job.train_on_prompt,
        ),
        chat_template=job.chat_template,
    )


def _split(job: JobConfig, data: Any) -> Split:
    if len(data) < 4:
        raise JobConfigError(
            [
                (
                    "dataset",
                    f"{job.dataset} has {len(data)} usable examples; a train/dev split needs at least 4",
                )
            ]
        )
    return make_split(data, job)


def _given_split(job: JobConfig, train: Any, dev: Any | None) -> Split:
    """The Python API's own tables (``datasets.Dataset``); classification jobs only."""
    if job.task != "classification":
        raise JobConfigError(
            [
                (
                    "train_data",
                    f"datasets.Dataset objects are read for classification jobs; write this "
                    f"{job.task} job's rows to a .jsonl or .parquet file and name it as dataset",
                )
            ]
        )
    split = given_split(train, dev, job)
    if len(split.train) < 2:
        raise JobConfigError(
            [("train_data", f"has {len(split.train)} usable examples; give at least 2")]
        )
    return split


def load_data(job: JobConfig, source: ModelSource) -> Any:
    """The whole dataset for the job's task (a chat file needs the model's tokenizer)."""
    if job.task == "classification":
        return load_dataset(job)
    from dora_core.worker.gendata import GenDataError, load_gen_dataset

    try:
        return load_gen_dataset(job, lambda: load_tokenizer(source, job.chat_template))
    except GenDataError as exc:
        raise JobConfigError([(exc.field, exc.message)]) from None
