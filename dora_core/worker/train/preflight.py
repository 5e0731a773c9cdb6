"""Everything that can be wrong with a job, checked before any training starts.

``prepare`` turns a JobConfig into a Plan (data split, model source, step
counts, run directory) or raises JobConfigError naming the field and the
fix: presets that are not installed, missing files and columns, targets that
match nothing, a schedule with no pruning phase at this run length, a
max_length beyond the model's positions, a run directory already in use.
The static rules (types, ranges, budget vs start rank) are the job config's.
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

from dora_core.contracts.job import JobConfig, JobConfigError
from dora_core.contracts.rundir import CHECKPOINTS_DIR, METRICS_FILE
from dora_core.worker.data import BatchPlan, Split, load_dataset, make_split
from dora_core.worker.models import ModelSource, load_config, resolve_model

_FIELD = re.compile(r"^(\w+): (.*)$", re.S)


@dataclass(frozen=True)
class Plan:
    job: JobConfig
    run_dir: Path
    split: Split
    source: ModelSource
    model_config: Any
    total_steps: int  # T, optimizer steps
    micro_per_epoch: int  # micro-batches per epoch on each rank
    eval_every: int
    checkpoint_every: int
    world_size: int

    @property
    def num_labels(self) -> int:
        return self.split.train.num_labels


def field_error(exc: ValueError, default_field: str) -> JobConfigError:
    """A library ValueError "field: message" as a JobConfigError for that field."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = _FIELD.match(text)
    if match and match.group(1) in JobConfig.model_fields:
        return JobConfigError([(match.group(1), match.group(2))])
    return JobConfigError([(default_field, text)])


def default_run_dir(job: JobConfig) -> Path:
    root = Path(os.environ.get("DORA_DATA_DIR", "data"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^\w.-]+", "-", job.display_name).strip("-") or "run"
    return root / "runs" / f"{safe}-{stamp}"


def run_in_use(run_dir: Path) -> bool:
    """A run started here already (it wrote checkpoints or telemetry)."""
    metrics = run_dir / METRICS_FILE
    return (run_dir / CHECKPOINTS_DIR).is_dir() or (metrics.exists() and metrics.stat().st_size > 0)


def count_steps(job: JobConfig, num_train: int, world_size: int) -> tuple[int, int]:
    """(T, micro-batches per epoch): max_steps, or ceil(epochs * micro-batches / grad_accum)."""
    micro = BatchPlan(num_train, job.batch_size, job.seed, world_size).per_epoch
    if job.max_steps is not None:
        return job.max_steps, micro
    return max(1, math.ceil(job.epochs * micro / job.grad_accum)), micro


def _check_model(job: JobConfig, source: ModelSource, num_labels: int) -> Any:
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
    config.num_labels = num_labels
    if job.method == "full":
        return config
    from transformers import AutoModelForSequenceClassification

    from dora_core.targets import find_targets

    with torch.device("meta"):  # the module tree only, no weights
        skeleton = AutoModelForSequenceClassification.from_config(config)
    try:
        find_targets(skeleton, job.target_modules)
    except ValueError as exc:
        raise field_error(exc, "target_modules") from None
    return config


def _check_schedule(job: JobConfig, total_steps: int) -> None:
    if job.method not in ("dora", "adalora"):
        return
    from dora_core.worker.train.methods import dora_config

    try:
        dora_config(job, total_steps)
    except ValueError as exc:
        error = field_error(exc, "max_steps")
        field, msg = error.errors[0]
        raise JobConfigError(
            [(field, f"{msg} (this job has T = {total_steps} optimizer steps)")]
        ) from None


def prepare(
    job: JobConfig, run_dir: Path | None = None, *, resume: bool = False, world_size: int = 1
) -> Plan:
    """Check the job against this machine and work out the run; raises JobConfigError."""
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
    if job.device == "cuda" and not torch.cuda.is_available():
        raise JobConfigError([("device", "cuda is not available on this machine; use auto or cpu")])
    data = load_dataset(job)
    if len(data) < 4:
        raise JobConfigError(
            [
                (
                    "dataset",
                    f"{job.dataset} has {len(data)} usable examples; a train/dev split needs at least 4",
                )
            ]
        )
    split = make_split(data, job)
    if not split.dev.texts:
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
    source = resolve_model(job.model)
    model_config = _check_model(job, source, data.num_labels)
    total_steps, micro = count_steps(job, len(split.train), world_size)
    _check_schedule(job, total_steps)
    eval_every = job.eval_every or max(1, total_steps // 10)
    return Plan(
        job=job,
        run_dir=run_dir,
        split=split,
        source=source,
        model_config=model_config,
        total_steps=total_steps,
        micro_per_epoch=micro,
        eval_every=eval_every,
        checkpoint_every=job.checkpoint_every or eval_every,
        world_size=world_size,
    )
