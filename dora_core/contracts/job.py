"""The job config: one schema shared by the CLI worker, the API and the dashboard.

Static validation only (types, ranges, cross-field rules); checks that depend
on the machine (is the preset installed, does the file exist, which columns
does it have) run in the worker's preflight before any training starts.
This module needs pydantic and the stdlib only, so the API can import it
without torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dora_core.config import DoraConfig, check_phases, check_ranks
from dora_core.contracts.datasource import dataset_label, parse_hf_spec
from dora_core.contracts.wire import METHODS, MethodName, TaskName, start_rank

_SETTINGS = {f.name: f for f in fields(DoraConfig)}
# The DoraConfig fields a job sets; the rest (total_steps, modules_to_save, compact) the
# worker decides.
ADAPTER_SETTINGS = (
    "target_rank",
    "init_rank",
    "target_modules",
    "alpha",
    "dropout",
    "beta",
    "warmup_frac",
    "final_frac",
    "prune_interval",
    "dem_weight",
    "dem_after_freeze",
)


def adapter_field(name: str, **overrides: Any) -> Any:
    """A job field declared by DoraConfig: its default, bounds and help (overridable)."""
    setting = _SETTINGS[name]
    spec = {k: v for k, v in setting.metadata.items() if k in ("ge", "gt", "le", "lt")}
    spec["description"] = setting.metadata["help"]
    return Field(setting.default, **{**spec, **overrides})


class JobConfigError(ValueError):
    """A job config that cannot run. ``errors`` holds (field, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {msg}" if field else msg for field, msg in errors))


class JobConfig(BaseModel):
    """Everything one fine-tuning job needs. Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # --- what to train on ---
    task: TaskName = Field(
        "classification",
        description="classification (a label per text), causal-lm (decoder SFT: instructions, "
        "chat, text) or seq2seq (encoder-decoder, e.g. T5/BART summaries)",
    )
    name: str | None = Field(
        None,
        max_length=120,
        description="Run name shown in the dashboard; default: <method>-<model>-<dataset>",
    )
    # Required: an empty job ({}) is refused rather than silently training a default one.
    model: str = Field(
        min_length=1,
        description="Model preset (minilm, smollm2-135m) or a local transformers folder",
    )
    dataset: str = Field(
        min_length=1,
        description="Dataset preset (rt-snippets, sms-spam, bbc-news, tweets), a local "
        ".csv/.jsonl/.parquet file, or hf:NAME[:CONFIG] from the local datasets cache "
        "(offline; its train split, or its only one)",
    )
    text_column: str = Field(
        "text", min_length=1, description="Text column of a user CSV/JSONL file"
    )
    label_column: str = Field(
        "label",
        min_length=1,
        description="Label column of a user CSV/JSONL file (strings or integers)",
    )
    prompt_column: str = Field(
        "prompt", min_length=1, description="Generative tasks: prompt (source) column of a file"
    )
    completion_column: str = Field(
        "completion",
        min_length=1,
        description="Generative tasks: completion (target) column; a file with a 'messages' "
        "column is chat, one with only text_column is plain language modelling",
    )
    train_on_prompt: bool = Field(
        False,
        description="Generative tasks: also train on prompt tokens (default: completion only)",
    )
    chat_template: str | None = Field(
        None,
        description="Jinja chat template for 'messages' data when the model's tokenizer has none",
    )
    max_length: int = Field(
        128,
        ge=8,
        le=4096,
        description="Tokens per example after truncation (batches are padded dynamically)",
    )
    dev_fraction: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="Share of the data held out as the dev split (seeded, recorded in the run dir)",
    )
    max_train_samples: int | None = Field(
        None, ge=1, description="Cap on training examples (for quick jobs)"
    )
    max_dev_samples: int | None = Field(None, ge=1, description="Cap on dev examples")

    # --- the adapter ---
    method: MethodName = Field(
        "dora",
        description="dora (dynamic rank, ours), lora or adalora (real PEFT), full (all weights)",
    )
    # The DoRA settings: names, defaults, bounds and help come from DoraConfig (one
    # declaration); the upper bounds are the job's own guard against typos.
    target_rank: int = adapter_field(
        "target_rank",
        le=256,
        description="b(T): average live components per adapted layer at the end "
        "(LoRA rank for method=lora)",
    )
    init_rank: int | None = adapter_field("init_rank", le=384)
    target_modules: list[str] | None = adapter_field("target_modules")
    alpha: float = adapter_field("alpha")
    dropout: float = adapter_field("dropout")
    beta: float = adapter_field("beta")
    warmup_frac: float = adapter_field("warmup_frac")
    final_frac: float = adapter_field("final_frac")
    prune_interval: int = adapter_field("prune_interval")
    dem_weight: float = adapter_field("dem_weight", le=10)
    dem_after_freeze: bool = adapter_field("dem_after_freeze")

    # --- optimisation ---
    epochs: float | None = Field(
        3.0,
        gt=0,
        le=1000,
        description="Passes over the training split (ignored when max_steps is set)",
    )
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps T; overrides epochs")
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per micro-batch")
    grad_accum: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step")
    lr: float = Field(5e-4, gt=0, le=1, description="Peak learning rate (AdamW)")
    head_lr: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Peak learning rate of the task head (classifier); default: lr",
    )
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay")
    warmup_ratio: float = Field(
        0.06, ge=0, lt=1, description="Share of T with a linear learning-rate warm-up"
    )
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Decay after the warm-up"
    )
    grad_clip: float | None = Field(
        1.0, gt=0, description="Max global gradient norm; null turns clipping off"
    )
    seed: int = Field(
        42, ge=0, le=2**31 - 1, description="Seed for the split, the init and the data order"
    )

    # --- bookkeeping ---
    eval_every: int | None = Field(
        None, ge=1, description="Optimizer steps between dev evaluations; default: 10 per run"
    )
    generate_every: int | None = Field(
        None,
        ge=1,
        description="Generative tasks: optimizer steps between sample generations + ROUGE "
        "(always at the end)",
    )
    max_gen_samples: int = Field(
        64, ge=0, le=100_000, description="Generative tasks: dev examples generated for ROUGE"
    )
    max_new_tokens: int = Field(
        64, ge=1, le=4096, description="Generative tasks: tokens generated per sample (greedy)"
    )
    checkpoint_every: int | None = Field(
        None, ge=1, description="Optimizer steps between checkpoints; default: at every evaluation"
    )
    report_every: int = Field(
        1, ge=1, description="Send scores every K steps (always at pruning events)"
    )
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        [],
        description="Also log the run to these trackers: tensorboard (event files in "
        "<run dir>/tensorboard), mlflow (at $MLFLOW_TRACKING_URI); pip extra 'trackers'",
    )
    output_dir: str | None = Field(
        None, description="Run directory; default: <data dir>/runs/<name>-<timestamp>"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto",
        description="Where to train: auto (CUDA, else Apple mps, else CPU), cpu, cuda, mps",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Forward passes under autocast: auto (bf16 on a CUDA GPU that supports "
        "it, else fp32), fp32, bf16 (CUDA or CPU), fp16 (CUDA, with a GradScaler); adapters, "
        "head, optimizer state and importance scores stay fp32",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations during the backward pass (less memory, more time; "
        "transformers' non-reentrant checkpointing)",
    )
    gpus: int = Field(
        0,
        ge=0,
        le=64,
        description="GPUs the API's launcher reserves for this job (its CUDA_VISIBLE_DEVICES; "
        "0: none, but a device cuda job gets 1); N > 1 runs one process per GPU under "
        "torchrun. `dora train` uses the GPUs it sees",
    )
    processes: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Worker processes (DDP ranks under torchrun) the API's launcher starts; "
        "default: one per reserved GPU, else 1 (N > 1 without GPUs: N gloo ranks on CPU)",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> JobConfig:
        problem = check_phases(self.warmup_frac, self.final_frac, None)
        if METHODS[self.method].prunes:
            problem = check_ranks(self.target_rank, self.init_rank) or problem
        if problem:
            raise ValueError(problem)
        if self.task != "classification" and self.head_lr is not None:
            raise ValueError(
                f"head_lr: a {self.task} job trains no classification head; remove head_lr"
            )
        try:
            parse_hf_spec(self.dataset)
        except ValueError as exc:
            raise ValueError(f"dataset: {exc}") from None
        if self.max_steps is None and self.epochs is None:
            raise ValueError("epochs: set epochs or max_steps")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError(
                "target_modules: empty list; give at least one suffix or regex, or null for the default"
            )
        problem = _placement_problem(self.device, self.precision, self.gpus, self.processes)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def gpu_count(self) -> int:
        """GPUs a launcher reserves: ``gpus``, or 1 for a device cuda job that names none."""
        return reserved_gpus(self.model_dump())

    @property
    def process_count(self) -> int:
        """Worker processes a launcher starts: ``processes``, else one per reserved GPU."""
        return worker_processes(self.model_dump())

    @property
    def start_rank(self) -> int | None:
        """r' of this job's method: b(T) for LoRA, init_rank or ceil(1.5 b(T)) if it prunes."""
        return start_rank(self.method, self.target_rank, self.init_rank)

    def dora_settings(self) -> dict[str, Any]:
        """The DoraConfig fields this job sets (everything but total_steps, known later)."""
        return {name: getattr(self, name) for name in ADAPTER_SETTINGS}

    @property
    def display_name(self) -> str:
        return self.name or f"{self.method}-{Path(self.model).name}-{dataset_label(self.dataset)}"


# Precision a device cannot run: the schema's rule for a named device, the worker's once
# auto has picked one (dora_core.worker.train.precision).
FP16_ON_CPU = (
    "fp16 is for CUDA GPUs: on a CPU it is emulated, slower than fp32 and saves no memory; "
    "use bf16 or fp32"
)
LOW_PRECISION_ON_MPS = "{precision} is not supported on mps here (untested); use fp32 or auto"


def _placement_problem(device: str, precision: str, gpus: int, processes: int | None) -> str | None:
    """Device, precision, GPUs and processes that cannot go together ("field: why; fix")."""
    if device == "cpu" and precision == "fp16":
        return f"precision: {FP16_ON_CPU}"
    if device == "mps" and precision in ("bf16", "fp16"):
        return f"precision: {LOW_PRECISION_ON_MPS.format(precision=precision)}"
    if device in ("cpu", "mps") and gpus:
        return f"gpus: device {device} uses no CUDA GPU; set gpus to 0, or device to cuda or auto"
    if device == "mps" and processes not in (None, 1):
        return "processes: a device mps job runs in one process; set processes to 1"
    count = gpus or (1 if device == "cuda" else 0)
    if count and processes not in (None, count):
        return (
            f"processes: one process per GPU; with {count} GPU{'s' if count > 1 else ''} leave "
            f"processes out, or set gpus to {processes}"
        )
    return None


def reserved_gpus(config: dict[str, Any]) -> int:
    """GPUs a launcher reserves for a stored job config (older configs have no gpus)."""
    gpus = int(config.get("gpus") or 0)
    return gpus or (1 if config.get("device") == "cuda" else 0)


def worker_processes(config: dict[str, Any]) -> int:
    """Processes a launcher starts for a stored job config: processes, else one per GPU."""
    return int(config.get("processes") or 0) or max(1, reserved_gpus(config))


def _field_of(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if part != "__root__")


_FIELD_PREFIX = re.compile(r"^(\w+): (.*)$", re.S)


def _split_field(field: str, msg: str) -> tuple[str, str]:
    """Cross-field rules name their field as a "field: " prefix of the message."""
    msg = msg.removeprefix("Value error, ")
    match = _FIELD_PREFIX.match(msg)
    if not field and match and match.group(1) in JobConfig.model_fields:
        return match.group(1), match.group(2)
    return field, msg


def parse_job_config(data: Any) -> JobConfig:
    """Validate a mapping into a JobConfig; raise JobConfigError naming each bad field."""
    if not isinstance(data, dict):
        raise JobConfigError(
            [("", f"a job config is a mapping of fields, got {type(data).__name__}")]
        )
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            field, msg = _split_field(_field_of(err["loc"]), err["msg"])
            if err["type"] == "extra_forbidden":
                msg = "unknown field; see `dora train --help` for the list"
            elif err["type"] == "missing" and field in JobConfig.model_fields:
                msg = f"required: {JobConfig.model_fields[field].description}"
            elif (
                "input" in err
                and err["type"] not in ("missing",)
                and not isinstance(err["input"], dict)
            ):
                msg = f"{msg} (got {err['input']!r})"
            errors.append((field, msg))
        raise JobConfigError(errors) from None


def load_job_config(path: str | Path) -> JobConfig:
    """Read a YAML or JSON job file."""
    path = Path(path)
    if not path.is_file():
        raise JobConfigError([("", f"job file {str(path)!r} does not exist")])
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise JobConfigError(
            [("", f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}")]
        ) from None
    return parse_job_config(data if data is not None else {})


def fields_help() -> str:
    """One line per field: name, type, default, description (for `dora train --help`)."""
    lines = []
    for name, info in JobConfig.model_fields.items():
        default = "required" if info.is_required() else f"default {info.default!r}"
        ann = getattr(info.annotation, "__name__", None) or str(info.annotation).replace(
            "typing.", ""
        )
        lines.append(f"  {name:<18} {ann:<22} {default}\n      {info.description}")
    return "\n".join(lines)
