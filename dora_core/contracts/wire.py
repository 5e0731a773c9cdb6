"""The vocabulary the worker, the API and the dashboard share: statuses, methods, records.

Stdlib only. Everything that crosses a process boundary is named here once;
the reporter builds these records, the API's ``TelemetryBatch`` validates
them, the dashboard reads them back (docs/protocol.md is the prose version).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

# --- runs ---------------------------------------------------------------------------------

RunStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
RUN_STATUSES: tuple[RunStatus, ...] = ("queued", "running", "completed", "failed", "cancelled")
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
# A worker's closing event -> the run's final status.
FINAL_EVENT_STATUS: dict[str, RunStatus] = {
    "finished": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}

# --- who a worker reports to ----------------------------------------------------------------

# Each database has an API instance id (GET /api/health). A worker sends the id of the API
# that launched it (or created its run) in this header on every write; an API with another id
# refuses with 409 and this ``code`` before it checks or stores anything.
INSTANCE_HEADER = "X-Dora-Instance"
WRONG_INSTANCE = "wrong_instance"
# A worker that could not reach its API (or was refused as foreign) for longer than its orphan
# timeout checkpoints and exits with this status, its spool kept; `dora train --resume` goes on.
ORPHANED_EXIT = 75
DEFAULT_ORPHAN_TIMEOUT_S = 1800.0  # DORA_ORPHAN_TIMEOUT_S / --orphan-timeout override it


def orphan_timeout_s(
    flag: str | None = None, environ: Mapping[str, str] = os.environ
) -> float | str:
    """--orphan-timeout, else DORA_ORPHAN_TIMEOUT_S, else 30 minutes; a message when bad.

    One parser for the worker (which acts on it) and `make run` (which tells the
    user, on Ctrl-C, how long the runs it leaves behind keep going).
    """
    name, text = "--orphan-timeout", flag
    if text is None:
        name, text = "DORA_ORPHAN_TIMEOUT_S", environ.get("DORA_ORPHAN_TIMEOUT_S") or None
    if text is None:
        return DEFAULT_ORPHAN_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        return f"{name}={text!r}: must be a number of seconds above 0"
    return value


# --- tasks --------------------------------------------------------------------------------

TaskName = Literal["classification", "causal-lm", "seq2seq"]
TASKS: tuple[TaskName, ...] = ("classification", "causal-lm", "seq2seq")
GENERATIVE_TASKS: frozenset[str] = frozenset({"causal-lm", "seq2seq"})
# The dev metric that picks a run's best step, per task (higher is better for both).
BEST_METRIC: dict[str, str] = {
    "classification": "accuracy",
    "causal-lm": "rougeL",
    "seq2seq": "rougeL",
}


# --- methods --------------------------------------------------------------------------------

MethodName = Literal["dora", "lora", "adalora", "full"]


@dataclass(frozen=True)
class MethodInfo:
    """What the API and the dashboard may know of a method without importing torch."""

    name: str
    prunes: bool  # components are scored and removed during training (a budget curve)
    adapter: bool  # trains an adapter (False: every weight; no rank pattern)
    description: str


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("dora", True, True, "Dynamic rank (Mao et al. 2024): prunes to b(T)"),
        MethodInfo("lora", False, True, "PEFT LoRA at rank b(T) in every layer"),
        MethodInfo("adalora", True, True, "PEFT AdaLoRA: SVD-style, prunes to b(T)"),
        MethodInfo("full", False, False, "Full fine-tuning of every weight"),
    )
}
PRUNING_METHODS: frozenset[str] = frozenset(n for n, m in METHODS.items() if m.prunes)


def start_rank(method: str, target_rank: int, init_rank: int | None) -> int | None:
    """r' of a run: b(T) for LoRA, init_rank or ceil(1.5 b(T)) for a pruning method."""
    info = METHODS[method]
    if not info.adapter:
        return None
    if not info.prunes:
        return target_rank
    return init_rank if init_rank is not None else -(-3 * target_rank // 2)


# --- telemetry records (metrics.jsonl lines; a batch groups them by kind) ---------------------

EVENT_KINDS: tuple[str, ...] = (
    "started",
    "prune",
    "mask_frozen",
    "eval",
    "checkpoint",
    "finished",
    "failed",
    "cancelled",
    "log",
    "samples",  # generated dev samples: data = {"samples": [{prompt, reference, prediction}]}
)


class ScoresRecord(TypedDict):
    type: Literal["scores"]
    step: int
    values: dict[str, list[float]]  # module name -> smoothed importance per component
    masks: dict[str, list[int]]  # module name -> 1 live / 0 pruned


class BudgetRecord(TypedDict):
    type: Literal["budget"]
    step: int
    target: int  # round(b(t) x L)
    live: int
    b: float


class ScalarsRecord(TypedDict):
    type: Literal["scalars"]
    step: int
    values: dict[str, float]


class EventRecord(TypedDict):
    type: Literal["event"]
    step: int
    kind: str
    message: str
    data: dict[str, Any] | None


Record = ScoresRecord | BudgetRecord | ScalarsRecord | EventRecord

# metrics.jsonl "type" -> the batch body's list for it.
BATCH_KEYS: dict[str, str] = {
    "scores": "scores",
    "budget": "budget",
    "scalars": "scalars",
    "event": "events",
}


def stream_keys(record: dict) -> list[tuple[str, ...]]:
    """The streams a record advances; a stream's steps never go back."""
    kind = record["type"]
    if kind == "scalars":
        return [("scalars", key) for key in record["values"]]
    if kind == "event":
        return [("event", record["kind"])]
    return [(kind,)]


def batch_size(body: dict) -> int:
    """Records in one telemetry batch body."""
    return sum(len(body.get(key, [])) for key in BATCH_KEYS.values())
