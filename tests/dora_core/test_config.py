"""DoraConfig: defaults from DESIGN.md, actionable errors, round trip."""

from __future__ import annotations

import pytest

from dora_core import DoraConfig


def test_defaults_follow_the_design():
    cfg = DoraConfig(total_steps=1000, target_rank=8)
    assert cfg.init_rank == 12  # ceil(1.5 * 8)
    assert (cfg.alpha, cfg.dropout, cfg.beta) == (8.0, 0.1, 0.9)
    assert (cfg.warmup_frac, cfg.final_frac, cfg.prune_interval) == (0.15, 0.5, 10)
    assert cfg.dem_weight == 0.1 and cfg.dem_after_freeze is False
    assert (cfg.warmup_steps, cfg.final_steps, cfg.freeze_step) == (150, 500, 500)
    assert cfg.scaling == pytest.approx(8 / 12)
    assert DoraConfig(total_steps=10, target_rank=3).init_rank == 5  # ceil(4.5)


def test_phase_boundaries_round_half_up():
    cfg = DoraConfig(total_steps=30, warmup_frac=0.15, final_frac=0.25)  # 4.5 and 7.5
    assert (cfg.warmup_steps, cfg.final_steps, cfg.freeze_step) == (5, 8, 22)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_rank": 0}, "target_rank: must be a positive integer"),
        ({"target_rank": 8, "init_rank": 7}, "init_rank: must be at least target_rank"),
        ({"init_rank": -1}, "init_rank: must be a positive integer"),
        ({"total_steps": 0}, "total_steps: must be a positive"),
        ({"warmup_frac": 0.5, "final_frac": 0.5}, "leave no pruning phase"),
        ({"total_steps": 1}, "raise total_steps"),
        ({"beta": 1.0}, r"beta: must be in \[0, 1\)"),
        ({"dropout": -0.1}, "dropout"),
        ({"alpha": 0}, "alpha: must be > 0"),
        ({"prune_interval": 0}, "prune_interval"),
        ({"dem_weight": -1}, "dem_weight"),
        ({"target_modules": []}, "target_modules: empty list"),
        ({"target_modules": ["query("]}, "not a valid regex"),
    ],
)
def test_bad_values_name_the_field(kwargs, match):
    base = {"total_steps": 100}
    with pytest.raises(ValueError, match=match):
        DoraConfig(**{**base, **kwargs})


def test_frozen_and_round_trip(tmp_path):
    cfg = DoraConfig(total_steps=50, target_modules=["query", "value"], modules_to_save=[])
    with pytest.raises(AttributeError):
        cfg.target_rank = 4  # type: ignore[misc]
    cfg.save(tmp_path)
    assert DoraConfig.load(tmp_path) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        DoraConfig.from_dict({**cfg.to_dict(), "rank": 3})
    with pytest.raises(ValueError, match="does not exist"):
        DoraConfig.load(tmp_path / "nope")
