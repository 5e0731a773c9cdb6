"""DoraConfig: every knob of the method, validated once, never mutated.

Defaults follow DESIGN.md section 2 (the paper, plus alpha and dropout from
the released code). Phase boundaries are whole optimizer steps, rounded half
up: t_i = round(warmup_frac * T) and the mask freezes at T - round(final_frac * T).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_FILE = "dora_config.json"


def round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (Python's round() rounds halves to even)."""
    return math.floor(value + 0.5)


def setting(default: Any, help: str, **bounds: float) -> Any:
    """A DoraConfig field with its help text and numeric bounds (ge/gt/le/lt).

    This is the one declaration of each setting: DoraConfig validates against
    the bounds, and the job schema (``dora_core.contracts.job``) derives its
    adapter fields (name, default, bounds, help) from the same metadata.
    """
    return field(default=default, metadata={"help": help, **bounds})


@dataclass(frozen=True, kw_only=True)
class DoraConfig:
    """Configuration of Dynamic Low-Rank Adaptation (Mao et al., ACL 2024)."""

    # Optimizer steps T of the whole run; the budget schedule is a function of it.
    total_steps: int = setting(None, "Optimizer steps T of the whole run", ge=1)
    target_rank: int = setting(
        8, "b(T): average live components per adapted layer at the end", ge=1
    )
    # Equal to target_rank: nothing is pruned (the paper's b(0) = b(T) ablation, Table 6).
    init_rank: int | None = setting(
        None,
        "r' = b(0): components per layer at the start; default ceil(1.5 * target_rank)",
        ge=1,
    )
    # A list: each entry is a module-name suffix ("query", "attention.output.dense") or,
    # if it contains regex syntax other than dots, a regex matched against the full name.
    # A plain string is one regex. None: the default projections of the model family.
    target_modules: list[str] | str | None = setting(
        None,
        "Module name suffixes or one regex; default: every attention and FFN projection "
        "of the model family",
    )
    alpha: float = setting(
        8.0, "Scale numerator: the adapter output is multiplied by alpha / r'", gt=0
    )
    dropout: float = setting(0.1, "Dropout on the adapter input", ge=0, lt=1)
    beta: float = setting(0.9, "EMA factor of the importance scores (Eq. 8)", ge=0, lt=1)
    warmup_frac: float = setting(0.15, "t_i / T: steps before pruning starts", ge=0, lt=1)
    final_frac: float = setting(0.5, "t_f / T: steps after the mask is frozen", ge=0, lt=1)
    prune_interval: int = setting(10, "Optimizer steps between pruning events", ge=1)
    dem_weight: float = setting(
        0.1, "eta, weight of the DEM regulariser (Eq. 10); 0 turns it off", ge=0
    )
    dem_after_freeze: bool = setting(
        False, "Keep the DEM regulariser after the mask is frozen (the released code drops it)"
    )
    # None: "classifier" and "score" where the model has them; [] trains none.
    modules_to_save: list[str] | None = setting(
        None, "Modules trained fully besides the adapters (the task head)"
    )
    compact: bool = setting(
        True,
        "Once the mask is frozen, slice pruned components out of the factors and the "
        "optimizer state (the first tuner.step(optimizer) at or after the freeze)",
    )

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple):
            object.__setattr__(self, "target_modules", list(self.target_modules))
        if isinstance(self.modules_to_save, tuple):
            object.__setattr__(self, "modules_to_save", list(self.modules_to_save))
        _validate(self)
        if self.init_rank is None:
            object.__setattr__(self, "init_rank", math.ceil(1.5 * self.target_rank))
        rank_problem = check_ranks(self.target_rank, self.init_rank)
        if rank_problem:
            raise ValueError(rank_problem)

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


def check_ranks(target_rank: int, init_rank: int | None) -> str | None:
    """The rule between b(T) and b(0), as an error message (None: fine). Shared with the job
    schema, which checks it before T is known."""
    if init_rank is not None and init_rank < target_rank:
        return (
            f"init_rank: must be at least target_rank ({init_rank} < {target_rank}); b(0) is "
            "where pruning starts and b(T) where it ends, so raise init_rank or lower "
            "target_rank (equal: nothing is pruned)"
        )
    return None


def check_phases(warmup_frac: float, final_frac: float, total_steps: int | None) -> str | None:
    """Is there a pruning phase, [t_i, T - t_f] with at least one step? An error message or
    None. Without T (the job schema) only the fractions are checked."""
    if total_steps is None:
        if warmup_frac + final_frac < 1:
            return None
        return (
            f"final_frac: warmup_frac + final_frac = {warmup_frac + final_frac:g} leaves no "
            "pruning phase; keep their sum below 1 (defaults 0.15 + 0.5)"
        )
    t_i = round_half_up(warmup_frac * total_steps)
    t_f = round_half_up(final_frac * total_steps)
    if total_steps - t_i - t_f >= 1:
        return None
    return (
        f"final_frac: warmup_frac={warmup_frac:g} and final_frac={final_frac:g} leave no "
        f"pruning phase in {total_steps} steps (t_i={t_i}, t_f={t_f}); lower them "
        "(defaults 0.15 and 0.5) or raise total_steps"
    )


def _bounds_message(value: Any, meta: dict[str, Any], is_int: bool) -> str | None:
    """What is wrong with ``value`` under the field's bounds, or None."""
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    ok = (
        (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
    )
    if ok:
        return None
    if is_int and ge == 1 and le is None:
        return "must be a positive integer"
    if ge is not None and lt is not None:
        return f"must be in [{ge:g}, {lt:g})"
    if gt is not None:
        return f"must be > {gt:g}"
    if ge is not None:
        return f"must be >= {ge:g}"
    return f"must be <= {le if le is not None else lt:g}"


def _validate(cfg: DoraConfig) -> None:
    """Raise ValueError naming the field and what to change."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None or f.type in ("bool", "list[str] | None", "list[str] | str | None"):
            continue
        is_int = f.type.startswith("int")
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if is_int and not (isinstance(value, int) and not isinstance(value, bool)):
            problem = (
                "must be a positive integer" if f.metadata.get("ge") == 1 else "must be an integer"
            )
        elif not numeric:
            problem = "must be a number"
        else:
            problem = _bounds_message(value, f.metadata, is_int)
        if problem:
            raise ValueError(f"{f.name}: {problem} (got {value!r})")
    if cfg.total_steps is None:
        raise ValueError("total_steps: must be a positive number of optimizer steps (got None)")
    phase_problem = check_phases(cfg.warmup_frac, cfg.final_frac, cfg.total_steps)
    if phase_problem:
        raise ValueError(phase_problem)
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
