"""Two torchrun processes (gloo, CPU) make identical decisions and stay in sync."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, free_port

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
def test_two_ranks_agree_on_every_decision(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(WORKER),
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    assert r0["losses"] != r1["losses"]  # the ranks really saw different data
    events = [s["info"].event for s in r0["steps"]]
    assert events.count("prune") == 5 and events.count("mask_frozen") == 1
    assert [s["info"] for s in r0["steps"]] == [s["info"] for s in r1["steps"]]
    for a, b in zip(r0["steps"], r1["steps"], strict=True):
        for name in a["scores"]:
            assert torch.equal(a["scores"][name], b["scores"][name])
            assert torch.equal(a["masks"][name], b["masks"][name])
    # Training continued in sync after compaction and the re-wrap.
    for name, (A, B, c, _) in r0["factors"].items():
        A1, B1, c1, _ = r1["factors"][name]
        assert torch.equal(A, A1) and torch.equal(B, B1) and torch.equal(c, c1)
    assert sum(f[0].shape[0] for f in r0["factors"].values()) == 4 * 12  # compacted to b(T) L
    moved = sum(
        float((r0["factors"][n][2] - r0["factors_at_freeze"][n][2]).abs().sum())
        for n in r0["factors"]
    )
    assert moved > 0
