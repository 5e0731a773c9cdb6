"""Job config validation: every bad field is named with a fix, before any training."""

from __future__ import annotations

import json
import math

import pytest

from dora_core.contracts.job import (
    JobConfig,
    JobConfigError,
    fields_help,
    load_job_config,
    parse_job_config,
)

# What a job must name; every other field has a default.
MINIMAL = {"model": "minilm", "dataset": "rt-snippets"}


def test_defaults_follow_the_paper() -> None:
    cfg = parse_job_config(MINIMAL)
    assert cfg.target_rank == 8 and cfg.start_rank == 12  # r' = ceil(1.5 b(T))
    assert (cfg.beta, cfg.warmup_frac, cfg.final_frac) == (0.9, 0.15, 0.5)
    assert (cfg.alpha, cfg.dropout, cfg.weight_decay, cfg.warmup_ratio, cfg.grad_clip) == (
        8.0,
        0.1,
        0.01,
        0.06,
        1.0,
    )


@pytest.mark.parametrize("b", [1, 2, 3, 7, 8, 33])
def test_start_rank_is_ceil_one_and_a_half(b: int) -> None:
    assert parse_job_config({**MINIMAL, "target_rank": b}).start_rank == math.ceil(1.5 * b)


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"lr": -1}, "lr", "greater than 0"),
        ({"target_rank": 0}, "target_rank", "greater than or equal to 1"),
        ({"target_rank": 8, "init_rank": 6}, "init_rank", "at least target_rank"),
        ({"warmup_frac": 0.6, "final_frac": 0.5}, "final_frac", "no pruning phase"),
        ({"method": "qlora"}, "method", "dora"),
        ({"batch_size": "big"}, "batch_size", "valid integer"),
        ({"tagret_rank": 4}, "tagret_rank", "unknown field"),
        ({"target_modules": []}, "target_modules", "empty"),
        ({"epochs": None}, "epochs", "max_steps"),
        ({"alpha": float("inf")}, "alpha", "finite"),
        ({"grad_clip": float("nan")}, "grad_clip", "finite"),
    ],
)
def test_bad_fields_are_named(data: dict, field: str, fragment: str) -> None:
    with pytest.raises(JobConfigError) as info:
        parse_job_config({**MINIMAL, **data})
    fields = [f for f, _ in info.value.errors]
    assert fields == [field]
    assert fragment in str(info.value)


def test_config_is_immutable() -> None:
    cfg = parse_job_config(MINIMAL)
    with pytest.raises(Exception, match="frozen"):
        cfg.lr = 1.0  # type: ignore[misc]


def test_load_yaml_and_json(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text(
        "model: minilm\ndataset: rt-snippets\nmethod: lora\ntarget_rank: 2\n"
    )
    (tmp_path / "b.json").write_text(json.dumps({**MINIMAL, "method": "adalora", "max_steps": 10}))
    assert load_job_config(tmp_path / "a.yaml").method == "lora"
    cfg = load_job_config(tmp_path / "b.json")
    assert isinstance(cfg, JobConfig) and cfg.max_steps == 10


def test_load_reports_missing_and_broken_files(tmp_path) -> None:
    with pytest.raises(JobConfigError, match="does not exist"):
        load_job_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("lr: [1,\n")
    with pytest.raises(JobConfigError, match="not valid YAML"):
        load_job_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(JobConfigError, match="mapping"):
        load_job_config(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    ("data", "missing"),
    [
        ({}, ["model", "dataset"]),
        ({"dataset": "rt-snippets"}, ["model"]),
        ({"model": "minilm", "max_steps": 5}, ["dataset"]),
    ],
)
def test_a_job_without_model_or_dataset_is_refused(data: dict, missing: list[str]) -> None:
    """No silent default job: `{}` used to train MiniLM on rt-snippets for 3 epochs."""
    with pytest.raises(JobConfigError) as info:
        parse_job_config(data)
    assert [f for f, _ in info.value.errors] == missing
    assert all(msg.startswith("required") for _, msg in info.value.errors)


def test_required_fields_say_so_in_the_field_list() -> None:
    listed = {line.split()[0]: line for line in fields_help().splitlines() if line[2:3] != " "}
    assert listed["model"].endswith("required") and listed["dataset"].endswith("required")
    assert "default 16" in listed["batch_size"]
