"""bench/gpu.py without a GPU: it stops at once in one line; its tables from a made-up run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def test_without_cuda_it_stops_at_once_in_one_line() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    out = subprocess.run(
        [sys.executable, "bench/gpu.py", "--out", "/nonexistent/never-written"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("bench/gpu.py: no CUDA device here")
    assert out.stdout == ""


def test_the_tables_of_a_run() -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from bench.gpu import markdown

    report = {
        "environment": {
            "date": "2026-12-02",
            "gpu": "NVIDIA H200",
            "gpu_memory_gib": 139.8,
            "torch": "2.13.0",
            "cuda": "12.8",
            "precision": "bf16",
        },
        "step": [
            {
                "task": "classification",
                "model": "MiniLM",
                "batch_shape": "16x41",
                "methods": {"dora-pruning": {"wall_ms": 12.34, "peak_mib": 95.2, "state_mib": 5.7}},
            },
            {"task": "causal-lm", "error": "bench/step.py exited 1: KeyError: 'x'"},
        ],
        "importance": {
            "layers": 72,
            "rank": 12,
            "variants": {"naive": {"ms": 1.5, "peak_mib": 113.0, "max_rel_error": 2e-7}},
        },
        "jobs": [
            {
                "job": "classification dora",
                "steps": 300,
                "wall_s": 21.04,
                "steps_per_s": 14.26,
                "metric": "accuracy",
                "value": 0.81234,
                "peak_mib": 612.4,
            },
            {"job": "causal-lm lora", "error": "RuntimeError: CUDA out of memory"},
        ],
    }
    text = markdown(report)
    assert text.startswith(
        "GPU benchmark, 2026-12-02: NVIDIA H200 (140 GiB), torch 2.13.0 (CUDA 12.8), "
        "precision bf16.\n"
    )
    assert "| dora-pruning | 12.3 ms | 95 MiB | 5.70 MiB |" in text
    assert "Step benchmark, causal-lm: bench/step.py exited 1: KeyError: 'x'" in text
    assert "| naive | 1.500 ms | 113.00 MiB | 2.0e-07 |" in text
    assert "| classification dora | 300 | 21.0 s | 14.3 | accuracy 0.8123 | 612 MiB |" in text
    assert "| causal-lm lora | failed: RuntimeError: CUDA out of memory |" in text
