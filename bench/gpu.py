"""The GPU benchmark: step time, importance and short real runs on one CUDA GPU.

    .venv/bin/python bench/gpu.py [--out bench/out/gpu] [--precision bf16] [--quick]

Needs a CUDA device and nothing beyond `make install` (on a machine with an
NVIDIA GPU, pip's torch wheel is a CUDA build); without one it stops at once
with one line. Sized to take about 5 minutes on one H100-class GPU
(``--quick``: about 2), an estimate: it has not run on a GPU yet; the first
run also converts the SmolLM2 GGUF preset once (cached).

1. ``bench/step.py --device cuda --precision P`` for ``--task classification``
   (MiniLM, 16 Rotten Tomatoes snippets a batch) and ``--task causal-lm``
   (SmolLM2-135M, 4 x 256 tokens): median step time per method (DoRA in its
   pruning phase and after the freeze, PEFT LoRA at r' and b(T), PEFT
   AdaLoRA) and the GPU memory a step takes beyond what is resident; each
   task in its own process.
2. Importance (Eq. 7) on the GPU, RoBERTa-base shapes (72 layers, r' = 12):
   the closed form per layer and batched vs materialising every component
   as the released code does; median time and peak allocated memory.
3. A short real job per method through the worker (the same code as
   ``dora train``): MiniLM classification on rt-snippets (dora, lora,
   adalora, full) and SmolLM2 causal-lm on bbc-summary (dora, lora,
   adalora, and dora with gradient checkpointing): wall time, optimizer
   steps per second, the dev metric, and the peak GPU memory
   (``torch.cuda.max_memory_allocated``, reset before each job).

Writes ``<out>/gpu.json`` (everything) and ``<out>/gpu.md`` (the tables) and
prints the tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 2**20
DEVICE = "cuda"  # where everything runs (a dry run of this script's plumbing may change it)

# (task, method, job fields beyond the common ones): the short real jobs.
CLASSIFICATION = {
    "task": "classification",
    "model": "minilm",
    "dataset": "rt-snippets",
    "max_steps": 300,
    "batch_size": 32,
    "max_length": 64,
    "target_rank": 8,
    "lr": 0.002,
    "eval_every": 100,
}
CAUSAL_LM = {
    "task": "causal-lm",
    "model": "smollm2-135m",
    "dataset": "bbc-summary",
    "max_steps": 100,
    "batch_size": 8,
    "max_length": 384,
    "target_rank": 8,
    "lr": 0.002,
    "eval_every": 100,
    "max_dev_samples": 64,
    "max_gen_samples": 32,
    "max_new_tokens": 48,
}
JOBS: list[tuple[str, dict[str, Any]]] = [
    ("dora", CLASSIFICATION),
    ("lora", CLASSIFICATION),
    ("adalora", CLASSIFICATION),
    ("full", {**CLASSIFICATION, "lr": 5e-5}),
    ("dora", CAUSAL_LM),
    ("lora", CAUSAL_LM),
    ("adalora", CAUSAL_LM),
    ("dora", {**CAUSAL_LM, "gradient_checkpointing": True}),
]


def require_cuda() -> Any:
    """torch, once a CUDA device is known to be there; else one line on stderr, exit 2."""
    import torch

    if not torch.cuda.is_available():
        build = torch.version.cuda
        why = (
            "this torch is a CPU-only build"
            if build is None
            else f"torch (CUDA {build}) finds no CUDA device"
        )
        print(
            f"bench/gpu.py: no CUDA device here ({why}, torch {torch.__version__}); "
            "run it on a machine with an NVIDIA GPU",
            file=sys.stderr,
        )
        sys.exit(2)
    return torch


# --- 1. the step benchmark, one process per task ----------------------------------------


def step_benchmark(task: str, precision: str, quick: bool, out: Path) -> dict[str, Any]:
    """bench/step.py on the GPU; its JSON summary."""
    target = out / f"step-{task}.json"
    rounds, steps = ("4", "3") if quick else ("12", "5")
    cmd = [
        sys.executable, str(ROOT / "bench" / "step.py"), "--task", task, "--device", DEVICE,
        "--precision", precision, "--rounds", rounds, "--steps", steps, "--json", str(target),
    ]  # fmt: skip
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"task": task, "error": f"bench/step.py exited {proc.returncode}: {tail}"}
    return json.loads(target.read_text(encoding="utf-8"))


# --- 2. importance on the GPU ------------------------------------------------------------


def importance_benchmark(torch: Any, repeats: int) -> dict[str, Any]:
    """Median time and peak allocated memory of each way to score RoBERTa-base's layers."""
    from bench.importance import closed_form_all, closed_form_batched, make_layers, naive_all

    device = torch.device(DEVICE)
    layers = [tuple(t.to(device) for t in layer) for layer in make_layers()]
    variants = {
        "closed form, per layer": closed_form_all,
        "closed form, batched": closed_form_batched,
        "naive (released code)": naive_all,
    }
    reference = naive_all([tuple(t.double() for t in layer) for layer in layers])
    rows = {}
    for name, fn in variants.items():
        worst = max(
            float(((g.double() - r).abs() / r.abs().clamp_min(1e-3)).max())
            for g, r in zip(fn(layers), reference, strict=True)
        )
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(layers)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(layers)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rows[name] = {
            "ms": statistics.median(times) * 1e3,
            "peak_mib": peak / MIB,
            "max_rel_error": worst,
        }
    return {"layers": len(layers), "rank": int(layers[0][0].shape[0]), "variants": rows}


# --- 3. short real jobs ------------------------------------------------------------------


def run_job(torch: Any, method: str, fields: dict[str, Any], precision: str, root: Path) -> dict:
    """One job through the worker's train(); its time, metric and peak GPU memory."""
    from dora_core.contracts.job import parse_job_config
    from dora_core.worker.train.loop import Telemetry, train

    checkpointing = bool(fields.get("gradient_checkpointing"))
    label = f"{fields['task']} {method}{' + checkpointing' if checkpointing else ''}"
    job = parse_job_config(
        {
            **fields,
            "method": method,
            "device": DEVICE,
            "precision": precision,
            "name": label,
            "output_dir": str(root / label.replace(" ", "-").replace("+", "")),
            "checkpoint_every": 10_000,
        }
    )
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        outcome = train(job, telemetry=Telemetry(api_url=None), progress=False)
    except Exception as exc:  # one broken job should not hide the others' numbers
        return {"job": label, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    seconds = time.perf_counter() - start
    result = outcome.result
    metrics = result.get("metrics", {})
    key = "accuracy" if fields["task"] == "classification" else "rougeL"
    return {
        "job": label,
        "task": fields["task"],
        "method": method,
        "gradient_checkpointing": checkpointing,
        "steps": result.get("total_steps"),
        "wall_s": seconds,
        "train_wall_s": result.get("wall_time_s"),
        "steps_per_s": result["total_steps"] / seconds,
        "metric": key,
        "value": metrics.get(key),
        "dev_loss": metrics.get("loss"),
        "trainable": result.get("params", {}).get("trainable"),
        "peak_mib": torch.cuda.max_memory_allocated() / MIB,
    }


# --- the report --------------------------------------------------------------------------


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(report: dict[str, Any]) -> str:
    """The tables of one run of this benchmark (pure: data in, text out)."""
    env = report["environment"]
    lines = [
        f"GPU benchmark, {env['date']}: {env['gpu']} ({env['gpu_memory_gib']:.0f} GiB), "
        f"torch {env['torch']} (CUDA {env['cuda']}), precision {env['precision']}.",
        "",
    ]
    for step in report["step"]:
        if "error" in step:
            lines += [f"Step benchmark, {step['task']}: {step['error']}", ""]
            continue
        lines += [
            f"Step benchmark, {step['task']} ({step['model']}, batches {step['batch_shape']}): "
            "median optimizer step and the GPU memory a step takes beyond what is resident.",
            "",
            "| method | step (median) | step memory | trainable + AdamW |",
            "|---|---|---|---|",
        ]
        for name, row in step["methods"].items():
            lines.append(
                f"| {name} | {row['wall_ms']:.1f} ms | {_num(row.get('peak_mib'), '.0f')} MiB "
                f"| {row['state_mib']:.2f} MiB |"
            )
        lines.append("")
    imp = report["importance"]
    lines += [
        f"Importance (Eq. 7), {imp['layers']} RoBERTa-base layers, r' = {imp['rank']}:",
        "",
        "| variant | time (median) | peak memory | max rel. error vs fp64 |",
        "|---|---|---|---|",
    ]
    for name, row in imp["variants"].items():
        lines.append(
            f"| {name} | {row['ms']:.3f} ms | {row['peak_mib']:.2f} MiB "
            f"| {row['max_rel_error']:.1e} |"
        )
    lines += [
        "",
        "Short real jobs (the worker's train(), no telemetry):",
        "",
        "| job | steps | wall | steps/s | dev metric | peak GPU memory |",
        "|---|---|---|---|---|---|",
    ]
    for job in report["jobs"]:
        if "error" in job:
            lines.append(f"| {job['job']} | failed: {job['error']} | | | | |")
            continue
        metric = f"{job['metric']} {_num(job['value'], '.4f')}"
        lines.append(
            f"| {job['job']} | {job['steps']} | {job['wall_s']:.1f} s | {job['steps_per_s']:.1f} "
            f"| {metric} | {job['peak_mib']:.0f} MiB |"
        )
    return "\n".join(lines) + "\n"


def environment(torch: Any, precision: str) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": props.name,
        "gpu_memory_gib": props.total_memory / 2**30,
        "gpus_visible": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16": torch.cuda.is_bf16_supported(),
        "precision": precision,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds and jobs")
    args = parser.parse_args()
    torch = require_cuda()  # fail fast, before anything is loaded
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(torch, args.precision)}
    print(f"GPU: {report['environment']['gpu']}, torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    report["step"] = [
        step_benchmark(task, args.precision, args.quick, args.out)
        for task in ("classification", "causal-lm")
    ]
    report["importance"] = importance_benchmark(torch, 10 if args.quick else 30)
    jobs = JOBS[::2] if args.quick else JOBS
    with tempfile.TemporaryDirectory(prefix="dora-gpu-bench-") as root:
        report["jobs"] = []
        for method, fields in jobs:
            print(f"job: {fields['task']} {method}", flush=True)
            report["jobs"].append(run_job(torch, method, fields, args.precision, Path(root)))
    report["total_s"] = time.perf_counter() - started
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    table = markdown(report)
    (args.out / "gpu.md").write_text(table, encoding="utf-8")
    print("\n" + table)
    print(f"total {report['total_s'] / 60:.1f} min; written: {args.out}/gpu.json, gpu.md")


if __name__ == "__main__":
    main()
