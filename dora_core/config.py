"""DoraConfig: every knob of the method, validated once, never mutated.

Defaults follow DESIGN.md section 2 (the paper, plus alpha and dropout from
the released code). Phase boundaries are whole optimizer steps, rounded half
up: t_i = round(warmup_frac * T) and the mask freezes at T - round(final_frac * T).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

CONFIG_FILE = "dora_config.json"


def round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (Python's round() rounds halves to even)."""
    return math.floor(value + 0.5)


@dataclass(frozen=True, kw_only=True)
class DoraConfig:
    """Configuration of Dynamic Low-Rank Adaptation (Mao et al., ACL 2024)."""

    # Optimizer steps T of the whole run; the budget schedule is a function of it.
    total_steps: int
    # b(T): average number of live components per adapted layer at the end.
    target_rank: int = 8
    # r' = b(0): components per layer at the start; None means ceil(1.5 * target_rank).
    # Equal to target_rank: nothing is pruned (the paper's b(0) = b(T) ablation, Table 6).
    init_rank: int | None = None
    # Which layers to adapt. A list: each entry is a module-name suffix
    # ("query", "attention.output.dense") or, if it contains regex syntax
    # other than dots, a regex matched against the full name. A plain string
    # is one regex. None: the default projections of the model family.
    target_modules: list[str] | str | None = None
    # Scale numerator: the adapter output is multiplied by alpha / r'.
    alpha: float = 8.0
    # Dropout on the adapter input.
    dropout: float = 0.1
    # EMA factor of the importance scores (Eq. 8).
    beta: float = 0.9
    # t_i / T: optimizer steps before the first pruning event.
    warmup_frac: float = 0.15
    # t_f / T: steps after the mask is frozen.
    final_frac: float = 0.5
    # Optimizer steps between pruning events inside [t_i, T - t_f].
    prune_interval: int = 10
    # eta, weight of the DEM regulariser (Eq. 10); 0 turns it off.
    dem_weight: float = 0.1
    # Keep the regulariser after the mask is frozen (the released code drops it).
    dem_after_freeze: bool = False
    # Modules trained fully besides the adapters (the task head). None:
    # "classifier" and "score" where the model has them; [] trains none.
    modules_to_save: list[str] | None = None
    # Once the mask is frozen, slice pruned components out of the factors and
    # the optimizer state (the first tuner.step(optimizer) at or after the freeze).
    compact: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple):
            object.__setattr__(self, "target_modules", list(self.target_modules))
        if isinstance(self.modules_to_save, tuple):
            object.__setattr__(self, "modules_to_save", list(self.modules_to_save))
        _validate(self)
        if self.init_rank is None:
            object.__setattr__(self, "init_rank", math.ceil(1.5 * self.target_rank))
        if self.init_rank < self.target_rank:
            raise ValueError(
                f"init_rank: must be at least target_rank ({self.init_rank} < "
                f"{self.target_rank}); b(0) is where pruning starts, b(T) where it ends"
            )

    # --- phase boundaries in optimizer steps ---
    @property
    def warmup_steps(self) -> int:
        """t_i: the first step at which pruning can happen."""
        return round_half_up(self.warmup_frac * self.total_steps)

    @property
    def final_steps(self) -> int:
        """t_f: the length of the final phase with a frozen mask."""
        return round_half_up(self.final_frac * self.total_steps)

    @property
    def freeze_step(self) -> int:
        """T - t_f: the last pruning event; the mask is fixed from here on."""
        return self.total_steps - self.final_steps

    @property
    def scaling(self) -> float:
        """s = alpha / r'."""
        return self.alpha / self.init_rank

    # --- (de)serialisation ---
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DoraConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"DoraConfig: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> DoraConfig:
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise ValueError(f"{path} does not exist; point at a folder written by tuner.save()")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _validate(cfg: DoraConfig) -> None:
    """Raise ValueError naming the field and what to change."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    need(
        is_int(cfg.total_steps) and cfg.total_steps >= 1,
        f"total_steps: must be a positive number of optimizer steps (got {cfg.total_steps!r})",
    )
    need(
        is_int(cfg.target_rank) and cfg.target_rank >= 1,
        f"target_rank: must be a positive integer (got {cfg.target_rank!r})",
    )
    need(
        cfg.init_rank is None or (is_int(cfg.init_rank) and cfg.init_rank >= 1),
        f"init_rank: must be a positive integer or None (got {cfg.init_rank!r})",
    )
    need(cfg.alpha > 0, f"alpha: must be > 0 (got {cfg.alpha!r})")
    need(0 <= cfg.dropout < 1, f"dropout: must be in [0, 1) (got {cfg.dropout!r})")
    need(0 <= cfg.beta < 1, f"beta: must be in [0, 1) (got {cfg.beta!r})")
    need(0 <= cfg.warmup_frac < 1, f"warmup_frac: must be in [0, 1) (got {cfg.warmup_frac!r})")
    need(0 <= cfg.final_frac < 1, f"final_frac: must be in [0, 1) (got {cfg.final_frac!r})")
    need(
        is_int(cfg.prune_interval) and cfg.prune_interval >= 1,
        f"prune_interval: must be a positive integer (got {cfg.prune_interval!r})",
    )
    need(cfg.dem_weight >= 0, f"dem_weight: must be >= 0 (got {cfg.dem_weight!r})")
    t_i = round_half_up(cfg.warmup_frac * cfg.total_steps)
    t_f = round_half_up(cfg.final_frac * cfg.total_steps)
    need(
        cfg.total_steps - t_i - t_f >= 1,
        f"final_frac: warmup_frac={cfg.warmup_frac:g} and final_frac={cfg.final_frac:g} leave no "
        f"pruning phase in {cfg.total_steps} steps (t_i={t_i}, t_f={t_f}); lower them "
        "(defaults 0.15 and 0.5) or raise total_steps",
    )
    _validate_names("target_modules", cfg.target_modules)
    _validate_names("modules_to_save", cfg.modules_to_save)


def _validate_names(field: str, value: Any) -> None:
    if value is None:
        return
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
        raise ValueError(f"{field}: give a list of non-empty module names, a regex, or None")
    if field == "target_modules" and not entries:
        raise ValueError(
            "target_modules: empty list; give at least one suffix or regex, or None for the default"
        )
    for entry in entries:
        try:
            re.compile(entry)
        except re.error as exc:
            raise ValueError(f"{field}: {entry!r} is not a valid regex ({exc})") from None
