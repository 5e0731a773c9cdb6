"""Checkpoints for exact resume: ``<run dir>/checkpoints/step-<N>/state.pt``.

One file holds the method state (adapter + head weights, tuner or AdaLoRA
allocator state), the optimizer, the LR scheduler, every RNG the step
touches and the data position. It is written to a temporary folder and
renamed, so a process killed mid-save leaves the previous checkpoint
intact; the newest complete one is what ``--resume`` loads.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch

from dora_core.contracts.rundir import CHECKPOINTS_DIR

CHECKPOINTS = CHECKPOINTS_DIR
STATE = "state.pt"
FORMAT = 1


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, payload: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically; keep only the newest ``keep``."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"format": FORMAT, "step": step, **payload}, tmp / STATE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_steps(run_dir)[:-keep]:
        shutil.rmtree(root / f"step-{old}", ignore_errors=True)
    return final


def list_steps(run_dir: Path) -> list[int]:
    """Steps with a complete checkpoint, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    steps = []
    for path in root.iterdir():
        name = path.name
        if name.startswith("step-") and name[5:].isdigit() and (path / STATE).is_file():
            steps.append(int(name[5:]))
    return sorted(steps)


def load_latest(run_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint's contents (on CPU), or None when there is none."""
    steps = list_steps(run_dir)
    if not steps:
        return None
    path = Path(run_dir) / CHECKPOINTS / f"step-{steps[-1]}" / STATE
    return torch.load(path, map_location="cpu", weights_only=True)
