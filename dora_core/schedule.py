"""The budget schedule (Eq. 9, as corrected in DESIGN.md) and the pruning calendar.

b is the average number of live components per adapted layer. It stays at
b(0) = r' during the warm-up, falls along a cubic that is slow at first and
fast at the end, and reaches b(T) exactly at T - t_f.
"""

from __future__ import annotations

from dora_core.config import DoraConfig, round_half_up


def budget_schedule(
    step: int,
    total_steps: int,
    init_rank: int,
    target_rank: int,
    warmup_frac: float = 0.15,
    final_frac: float = 0.5,
) -> float:
    """b(t) = b(T) + (b(0) - b(T)) * (1 - xi^3), xi = clip((t - t_i) / (T - t_i - t_f), 0, 1).

    t_i and t_f are whole steps, ``round_half_up(frac * T)``, the same boundaries
    the tuner prunes on. Raises ValueError when the fractions leave no pruning phase.
    """
    warmup = round_half_up(warmup_frac * total_steps)
    final = round_half_up(final_frac * total_steps)
    span = total_steps - warmup - final
    if span < 1:
        raise ValueError(
            f"final_frac: warmup_frac={warmup_frac:g} and final_frac={final_frac:g} leave no "
            f"pruning phase in {total_steps} steps; lower them or raise total_steps"
        )
    xi = min(max((step - warmup) / span, 0.0), 1.0)
    return target_rank + (init_rank - target_rank) * (1.0 - xi**3)


def config_budget(cfg: DoraConfig, step: int) -> float:
    """b(t) for a config."""
    return budget_schedule(
        step, cfg.total_steps, cfg.init_rank, cfg.target_rank, cfg.warmup_frac, cfg.final_frac
    )


def budget_target(b: float, num_layers: int) -> int:
    """Live components the model keeps at budget b: round(b * L), halves up."""
    return round_half_up(b * num_layers)


def is_prune_step(cfg: DoraConfig, step: int) -> bool:
    """Events every prune_interval steps from t_i up to T - t_f, and always at T - t_f."""
    t_i, t_end = cfg.warmup_steps, cfg.freeze_step
    if step == t_end:
        return True
    return t_i <= step < t_end and (step - t_i) % cfg.prune_interval == 0
