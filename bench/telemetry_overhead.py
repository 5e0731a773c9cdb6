"""Training speed with the telemetry reporter streaming to a live API vs reporter off.

The worker's own step (``Worker._train_step`` + ``_report_step``: forward,
loss + DEM, backward, clip, AdamW, ``tuner.step()``, then the telemetry
hand-over) on MiniLM with batches of 16 real Rotten Tomatoes snippets. The
schedule is set so long (T = 100k) that every measured step is in the
warm-up, where scores move and are sent at *every* step: the worst case for
telemetry volume (36 modules x 12 scores + masks + budget + 5 scalars per step).

Modes, interleaved round by round (A B C, B C A, ...) in one process, each
mode of a round on the same batches:
  off        no telemetry at all (not even the snapshot of scores and masks)
  journal    the default without --api: records go to metrics.jsonl only
  streaming  --api: journal + batches POSTed to a real API (uvicorn + SQLite,
             started here as a subprocess on a free loopback port)

    .venv/bin/python bench/telemetry_overhead.py [--rounds 6] [--steps 15]

Prints steps/s medians and the ratios streaming/off and journal/off (of the
medians, and the median of the per-round ratios), the
time the training thread itself spends handing records over (a number the
machine's noise does not swamp), and checks that the API stored every step
that was streamed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dora_core.contracts.job import parse_job_config
from dora_core.worker.data import BatchPlan
from dora_core.worker.telemetry import NullReporter, Reporter
from dora_core.worker.train.loop import Worker, pick_device
from dora_core.worker.train.plan import prepare

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "DORA_DATA_DIR": str(data_dir), "DORA_API_PORT": str(port)}
    env.pop("DORA_API_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the API did not start (python -m backend)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=15, help="optimizer steps per mode per round")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dora-telemetry-bench-"))
    job = parse_job_config(
        {
            "model": "minilm",
            "dataset": "rt-snippets",
            "method": "dora",
            "target_rank": 8,
            "max_steps": 100_000,
            "batch_size": 16,
            "lr": 1e-3,
            "device": "cpu",
            "output_dir": str(tmp / "run"),
        }
    )
    plan = prepare(job, tmp / "run")
    worker = Worker(plan, pick_device(job.device), NullReporter(), report_every=1)
    worker.restore(None)
    lengths = tuple(len(ids) for ids in worker.train_data.input_ids)
    data_order = BatchPlan(len(lengths), job.batch_size, job.seed, lengths=lengths)
    batches = data_order.batches()
    api, url = start_api(tmp / "data")
    reporters = {
        "off": NullReporter(),  # never called; see the loop
        "journal": Reporter(tmp / "journal"),
        "streaming": Reporter(
            tmp / "streaming", url, run_name="bench", config=job.model_dump(mode="json")
        ),
    }
    body = worker.method.register_body()
    for reporter in reporters.values():
        reporter.register(body)
    speeds: dict[str, list[float]] = {mode: [] for mode in reporters}
    handover: dict[str, float] = dict.fromkeys(reporters, 0.0)  # time inside _report_step
    streamed_steps = 0
    try:
        for _ in range(2):  # warm-up, not timed
            worker._train_step(batches)
        for round_ in range(args.rounds):
            modes = list(reporters)
            modes = modes[round_ % 3 :] + modes[: round_ % 3]  # rotate who goes first
            for mode in modes:
                # Every mode of a round trains on the same batches (step cost follows their length).
                batches = data_order.batches(start=round_ * args.steps)
                worker.reporter = reporters[mode]
                start = time.perf_counter()
                for _ in range(args.steps):
                    scalars = worker._train_step(batches)
                    if mode == "off":
                        continue  # no snapshot of scores either: no telemetry at all
                    before = time.perf_counter()
                    worker._report_step(scalars)
                    handover[mode] += time.perf_counter() - before
                speeds[mode].append(args.steps / (time.perf_counter() - start))
                if mode == "streaming":
                    streamed_steps += args.steps
            print(
                f"round {round_ + 1}/{args.rounds}: "
                + ", ".join(f"{m} {speeds[m][-1]:.3f}" for m in reporters)
            )
        delivered = reporters["streaming"].close(timeout=120)
        run_id = reporters["streaming"].journal.run_id
        series = httpx.get(
            f"{url}/api/runs/{run_id}/scalars", params={"keys": "loss", "max_points": 100000}
        ).json()
        stored = len(series["series"]["loss"]["steps"])
    finally:
        api.terminate()
        api.wait(timeout=30)
    med = {mode: statistics.median(v) for mode, v in speeds.items()}
    print(
        f"\nsteps/s, median of {args.rounds} rounds x {args.steps} steps (threads: {torch.get_num_threads()}):"
    )
    for mode, value in med.items():
        print(f"  {mode:<10} {value:.3f}")
    steps_each = args.rounds * args.steps
    for mode in ("journal", "streaming"):
        per_step = handover[mode] / steps_each
        print(
            f"  {mode}: {per_step * 1e3:.2f} ms per step handing records to the reporter "
            f"({per_step * med[mode] * 100:.2f}% of a step)"
        )
    for mode in ("streaming", "journal"):
        paired = statistics.median(a / b for a, b in zip(speeds[mode], speeds["off"], strict=True))
        print(
            f"{mode} / off = {med[mode] / med['off']:.3f} (ratio of medians), "
            f"{paired:.3f} (median of per-round ratios)"
        )
    print(f"API stored {stored} of {streamed_steps} streamed steps; spool empty: {delivered}")
    return 0 if delivered and stored == streamed_steps else 1


if __name__ == "__main__":
    sys.exit(main())
