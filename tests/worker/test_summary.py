"""The summary `dora train` ends with: hand-computed from a small result, then a real run."""

from __future__ import annotations

import logging
from pathlib import Path

from dora_core.contracts.job import parse_job_config
from dora_core.worker.train.loop import train
from dora_core.worker.train.summary import adapter_params_at_start, rank_by_type, summary_lines
from tests.worker.conftest import tiny_job

MODULES = [
    {"name": "l0.q", "type": "query", "shape": [4, 4], "rank": 3, "layer": 0},
    {"name": "l0.ffn", "type": "ffn", "shape": [8, 4], "rank": 3, "layer": 0},
    {"name": "l1.q", "type": "query", "shape": [4, 4], "rank": 3, "layer": 1},
]
RESULT = {
    "metrics": {"accuracy": 0.8125, "macro_f1": 0.8, "loss": 0.41},
    "best": {"key": "eval/accuracy", "value": 0.84, "step": 30},
    "total_steps": 40,
    "params": {"adapter": 44, "head": 10, "trainable": 54, "total": 1000},
    "rank_pattern": {"l0.q": 1, "l0.ffn": 3, "l1.q": 2},
    "wall_time_s": 75.4,
}


def test_summary_from_a_hand_made_result() -> None:
    assert rank_by_type(RESULT["rank_pattern"], MODULES) == {"query": 1.5, "ffn": 3.0}
    assert adapter_params_at_start(MODULES) == 3 * 9 + 3 * 13 + 3 * 9  # r' x (d_in + d_out + 1)
    lines = summary_lines(
        RESULT, MODULES, Path("runs/x"), Path("runs/x/adapter"), "http://d/runs/7"
    )
    assert lines == [
        "done: dev accuracy 0.8125, macro_f1 0.8000, loss 0.4100 (1 min 15 s)",
        "best eval/accuracy 0.8400 at step 30 of 40",
        "adapter: 44 parameters (6 of 9 components live; 93 at r'), head 10",
        "live rank per module type: query 1.5, ffn 3.0",
        "adapter: runs/x/adapter  (PEFT format; `dora merge runs/x OUT` for merged weights)",
        "run dir: runs/x",
        "dashboard: http://d/runs/7",
    ]


def test_a_run_ends_with_the_summary(tiny_bert, sentiment_csv, tmp_path, caplog) -> None:
    job = parse_job_config(tiny_job(tiny_bert, sentiment_csv, tmp_path / "run", max_steps=20))
    with caplog.at_level(logging.INFO, logger="dora"):
        outcome = train(job, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("dora")]
    tail = lines[-6:]
    assert tail[0].startswith("done: dev accuracy ")
    assert tail[3].startswith("live rank per module type: attention.self.query ")
    assert tail[-1] == f"run dir: {tmp_path / 'run'}"
    live = sum(outcome.result["rank_pattern"].values())
    assert f"({live} of " in tail[2]
