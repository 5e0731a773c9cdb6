"""A run directory's files, and how a reader that is not the worker reads them.

Stdlib only. The worker writes these names; the API, the study and the CLI
read them. ``committed_spool`` is the spool's commit rule (``settle``), shared
by a resuming worker's recovery and the API taking in what an ended worker
left behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from dora_core.contracts.wire import batch_size

JOB_FILE = "job.json"  # the validated job config
SPLIT_FILE = "split.json"  # the seeded train/dev split and label names
RESULT_FILE = "result.json"  # written last: its presence means the run completed
LOG_FILE = "log.txt"  # the worker's own log
WORKER_LOG = "worker.log"  # stdout + stderr of a launched worker (the API's log tail)
METRICS_FILE = "metrics.jsonl"  # every telemetry record, one per line
SAMPLES_FILE = "samples.jsonl"  # generative runs: {step, prompt, reference, prediction} per line
SPOOL_FILE = "telemetry-spool.jsonl"  # batches not yet acknowledged by the API
STATE_FILE = "telemetry-state.json"  # the journal's commit point
ADAPTER_DIR = "adapter"  # the PEFT adapter (every adapter method)
DORA_DIR = "dora"  # tuner.save(): weights + tuner state + config
MODEL_DIR = "model"  # method=full: the whole fine-tuned model
CHECKPOINTS_DIR = "checkpoints"
# The reporter's register body (modules, calendar, ranks, sizes), kept also when no API
# listens: `dora sync` registers it later and `dora plot` lays out the heatmap with it.
REGISTER_FILE = "register.json"
TENSORBOARD_DIR = "tensorboard"  # report_to tensorboard: the event files
TRACKERS_FILE = "trackers.json"  # report_to mlflow: the MLflow run a resumed run continues
HEATMAP_FILE = "rank-heatmap.png"  # report_to mlflow: the final rank heatmap (an artifact)
SYNC_FILE = "sync.json"  # `dora sync`: per API instance, its run and how far it got (0600)


def read_lines(path: Path) -> list[str]:
    """Complete lines only: a torn last line (no newline) is ignored."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    return [line for line in lines[:-1] if line]


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every record in ``metrics.jsonl`` (complete lines)."""
    return [json.loads(line) for line in read_lines(Path(run_dir) / METRICS_FILE)]


def read_register(run_dir: str | Path) -> dict | None:
    """The run's module register (``REGISTER_FILE``); None when the run never wrote one."""
    path = Path(run_dir) / REGISTER_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def settle(
    spooled: list[dict], next_seq: int, metrics_lines: int, metrics_on_disk: int
) -> tuple[list[dict], int, int]:
    """Which spooled requests are committed: (pending, metrics lines, next seq).

    The state file is the commit point. A batch past it counts only when it
    is the very next one and its records are all in ``metrics.jsonl``
    (killed between those writes and the state's): it is completed, not lost.
    """
    pending = []
    for item in spooled:
        seq = item["body"].get("seq") if item["path"] == "telemetry" else None
        if seq is None or seq < next_seq:
            pending.append(item)
        elif seq == next_seq and metrics_on_disk >= metrics_lines + batch_size(item["body"]):
            metrics_lines += batch_size(item["body"])
            next_seq = seq + 1
            pending.append(item)
    return pending, metrics_lines, next_seq


def committed_spool(run_dir: str | Path) -> list[dict]:
    """The requests a run's spool still holds, oldest first, read without changing a file.

    The same rule as a resumed worker's recovery, for a reader that is not
    the worker (the API taking in what an ended worker left behind).
    """
    run_dir = Path(run_dir)
    state_path = run_dir / STATE_FILE
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else {}
    spooled = [json.loads(line) for line in read_lines(run_dir / SPOOL_FILE)]
    pending, _, _ = settle(
        spooled,
        state.get("next_seq", 0),
        state.get("metrics_lines", 0),
        len(read_lines(run_dir / METRICS_FILE)),
    )
    return pending
