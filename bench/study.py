"""Reproduce the paper's comparison offline: DoRA vs PEFT LoRA vs PEFT AdaLoRA at equal b(T).

    .venv/bin/python bench/study.py --quick          # one dataset, one seed: < 15 min on 2 cores
    .venv/bin/python bench/study.py                  # the full grid (hours; resumable)
    .venv/bin/python bench/study.py --api http://127.0.0.1:8000   # every cell is a dashboard run
    .venv/bin/python bench/study.py --generative --jobs 2   # bbc-summary with SmolLM2 (~2 h)

First the learning rate is tuned per dataset and method on one seed's dev
split (the same search space for every method), then every cell of
datasets x methods x b(T) x seeds runs at its method's chosen lr. Each cell
is one `dora train` job in a subprocess: the very worker users run, one
process per cell (no state leaks between cells; a crash loses one cell).
Finished cells are appended to ``docs/results/<grid>-search.jsonl`` and
``<grid>-cells.jsonl``; rerunning the same command skips them, and a cell
that was interrupted runs again from scratch. At the end the report
``docs/results.md`` is regenerated (bench/study_report.py). A cell's record
carries its task's dev metrics (``TASK_METRICS``: accuracy and macro-F1, or
ROUGE-1/2/L and perplexity for the generative grid), its dev loss, parameter
counts, time and final rank pattern.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.study_generative import GENERATIVE  # noqa: E402
from bench.study_grid import (  # noqa: E402
    GRIDS,
    HEADLINE,
    TASK_METRICS,
    Cell,
    Grid,
    Progress,
    ResultFile,
    final_cells,
    search_cells,
    select_lr,
)
from bench.study_round2 import ROUND2, Round2Study  # noqa: E402
from dora_core.contracts.rundir import RESULT_FILE, WORKER_LOG  # noqa: E402

RESULTS_DIR = ROOT / "docs" / "results"
RUNS_DIR = ROOT / "data" / "study"


class CellFailed(RuntimeError):
    """The worker exited non-zero for one cell; the message ends with its last log lines."""


class Interrupted(RuntimeError):
    """SIGTERM / Ctrl-C: stop starting cells, cancel the running ones."""


# --- where results go ----------------------------------------------------------------------


class Files:
    """The study's files for one grid: two result JSONLs, a session log, run directories."""

    def __init__(self, grid: Grid, results_dir: Path = RESULTS_DIR, runs_dir: Path = RUNS_DIR):
        self.search = ResultFile(results_dir / f"{grid.name}-search.jsonl")
        self.cells = ResultFile(results_dir / f"{grid.name}-cells.jsonl")
        self.sessions = ResultFile(results_dir / f"{grid.name}-sessions.jsonl")
        self.runs = runs_dir / grid.name


# --- the model's layout (for rank patterns) ---------------------------------------------------


def module_layout(model: str, task: str = "classification") -> dict[str, dict[str, Any]]:
    """{module name: {layer, type, shape}} of the adapted modules, from a weightless skeleton
    of the task's model class built with the worker's own target rules (the same call its
    preflight makes)."""
    import torch

    from dora_core.layer import layer_shape
    from dora_core.targets import block_position, find_targets
    from dora_core.worker.models import auto_class, load_config, resolve_model

    config = load_config(resolve_model(model))
    with torch.device("meta"):
        skeleton = auto_class(task).from_config(config)
    layout = {}
    for name in find_targets(skeleton, None):
        layer, mtype = block_position(skeleton, name)
        d_out, d_in = layer_shape(skeleton.get_submodule(name))
        layout[name] = {"layer": layer, "type": mtype, "shape": [int(d_out), int(d_in)]}
    return layout


def _adalora_live(run_dir: Path, layout: dict[str, dict[str, Any]]) -> dict[str, int] | None:
    """AdaLoRA's final live ranks from the saved adapter's ``rank_pattern`` (keyed by the
    lora_E parameter name, a boolean per component)."""
    path = run_dir / "adapter" / "adapter_config.json"
    if not path.is_file():
        return None
    pattern = json.loads(path.read_text(encoding="utf-8")).get("rank_pattern") or {}
    live = {}
    for key, keep in pattern.items():
        name = next((m for m in layout if key == m or key.endswith(f".{m}.lora_E")), None)
        name = name or next((m for m in layout if f"{m}.lora_E" in key), None)
        if name is not None:
            live[name] = int(sum(bool(v) for v in keep))
    return live or None


def rank_rows(live: dict[str, int], layout: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A rank pattern as self-describing rows (the report needs no model to draw it)."""
    return [
        {"module": name, "layer": info["layer"], "type": info["type"], "live": int(live[name])}
        for name, info in layout.items()
        if name in live
    ]


def live_adapter_params(live: dict[str, int], layout: dict[str, dict[str, Any]]) -> int:
    """Parameters of the live components: r x (d_in + d_out + 1) per layer (A row, B column,
    the gate c or AdaLoRA's singular value E)."""
    from dora_core.contracts.params import live_params

    return live_params(
        ((live[n], info["shape"]) for n, info in layout.items() if n in live), gated=True
    )


def dev_history(run_dir: Path, task: str = "classification") -> list[dict[str, float]]:
    """Every dev evaluation of a run from its metrics.jsonl: the step and the task's metrics
    that evaluation has (a generative run's ROUGE only where it generated)."""
    from dora_core.contracts.rundir import read_metrics

    history = []
    for rec in read_metrics(run_dir):
        values = rec.get("values", {}) if rec.get("type") == "scalars" else {}
        if "eval/loss" in values:
            row = {"step": rec["step"]}
            row.update(
                {m: values[f"eval/{m}"] for m in TASK_METRICS[task] if f"eval/{m}" in values}
            )
            history.append(row)
    return history


# --- one cell ------------------------------------------------------------------------------


class CellRunner:
    """Runs cells as `python -m dora_core.worker.cli train` subprocesses and turns them into records."""

    def __init__(
        self,
        grid: Grid,
        files: Files,
        layout: dict[str, dict[str, Any]],
        api: str | None = None,
        threads: int = 1,
    ):
        self.grid, self.files, self.layout = grid, files, layout
        self.api, self.threads = api, threads
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self.stopping = False

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Each cell is its own run: never report into a run the study was launched for.
        for var in ("DORA_RUN_ID", "DORA_INGEST_TOKEN", "DORA_API_URL"):
            env.pop(var, None)
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            OMP_NUM_THREADS=str(self.threads),
            MKL_NUM_THREADS=str(self.threads),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        return env

    def run(self, cell: Cell) -> dict[str, Any]:
        """Train one cell from scratch (a leftover directory of an interrupted try is removed)."""
        run_dir = self.files.runs / cell.slug(self.grid)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        job_file = run_dir / "study-job.json"
        job_file.write_text(json.dumps(cell.job(self.grid), indent=2) + "\n", encoding="utf-8")
        cmd = [sys.executable, "-m", "dora_core.worker.cli", "train", str(job_file)]
        cmd += ["--output-dir", str(run_dir), "--no-progress"]
        if self.api:
            cmd += ["--api", self.api]
        started = time.monotonic()
        with open(run_dir / WORKER_LOG, "wb") as log:
            with self._lock:
                if self.stopping:
                    raise Interrupted(cell.label)
                proc = subprocess.Popen(
                    cmd, cwd=ROOT, env=self._env(), stdout=log, stderr=subprocess.STDOUT
                )
                self._procs[cell.label] = proc
            try:
                code = proc.wait()
            finally:
                with self._lock:
                    self._procs.pop(cell.label, None)
        wall = time.monotonic() - started
        if self.stopping:
            raise Interrupted(cell.label)
        result_file = run_dir / RESULT_FILE
        if code != 0 or not result_file.is_file():
            tail = (run_dir / WORKER_LOG).read_text(encoding="utf-8", errors="replace")
            tail = "\n    ".join(tail.strip().splitlines()[-6:])
            raise CellFailed(f"{cell.label}: worker exited {code}; last log lines:\n    {tail}")
        return self.record(cell, json.loads(result_file.read_text(encoding="utf-8")), run_dir, wall)

    def record(
        self, cell: Cell, result: dict[str, Any], run_dir: Path, wall: float
    ) -> dict[str, Any]:
        """One JSONL line: what was run, the task's dev metrics (``TASK_METRICS``) and dev
        loss, parameter counts, time, ranks."""
        params = result["params"]
        live: dict[str, int] | None
        if cell.method == "dora":
            live = result.get("rank_pattern")
        elif cell.method == "adalora":
            live = _adalora_live(run_dir, self.layout)
        else:
            live = {name: cell.budget for name in self.layout}
        job = cell.job(self.grid)
        task = self.grid.task
        try:
            shown_dir = str(run_dir.relative_to(ROOT))
        except ValueError:
            shown_dir = str(run_dir)
        return {
            "key": cell.key(self.grid),
            "grid": self.grid.name,
            "phase": cell.phase,
            "task": task,
            "dataset": cell.dataset,
            "method": cell.method,
            "budget": cell.budget,
            "init_rank": cell.init_rank,
            "overrides": dict(cell.overrides),
            "seed": cell.seed,
            "lr": cell.lr,
            "steps": result["total_steps"],
            "max_length": job["max_length"],
            "train_size": result["train_size"],
            "dev_size": result["dev_size"],
            **{m: result["metrics"][m] for m in TASK_METRICS[task]},
            "dev_loss": result["metrics"]["loss"],
            "adapter_params": params["adapter"],
            "live_adapter_params": (
                params["adapter"]  # LoRA has no gate: r x (d_in + d_out), all live
                if cell.method == "lora"
                else live_adapter_params(live, self.layout)
                if live
                else None
            ),
            "head_params": params["head"],
            "total_params": params["total"],
            "train_s": result["wall_time_s"],
            "wall_s": round(wall, 2),
            "threads": self.threads,
            "rank_pattern": rank_rows(live, self.layout)
            if live and cell.method != "lora"
            else None,
            "evals": dev_history(run_dir, task),
            "run_dir": shown_dir,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def stop(self) -> None:
        """Cancel running workers with SIGTERM (they checkpoint and exit); nothing is recorded."""
        with self._lock:
            self.stopping = True
            procs = list(self._procs.values())
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()


# --- the study -----------------------------------------------------------------------------


class Study(Progress):
    """Which cells of a grid still have to run, in order, given what the result files hold."""

    def chosen_lr(self, dataset: str) -> dict[str, float] | None:
        """Each method's lr for ``dataset`` once its whole search is finished, else None. A
        one-point search space is the lr from the start, so the grid's other seeds need not
        wait for it (the generative grid: no core idles while the last search cell runs)."""
        if len(self.grid.lrs) == 1:
            return dict.fromkeys(self.grid.methods, self.grid.lrs[0])
        cells = [c for c in search_cells(self.grid) if c.dataset == dataset]
        if any(c.key(self.grid) not in self.search_done for c in cells):
            return None
        records = [self.search_done[c.key(self.grid)] for c in cells]
        return {m: lr for (_, m), lr in select_lr(records).items()}

    def reuse_search(self) -> int:
        """Final cells identical to a search cell (seed and b(T) of the search, chosen lr)
        take the search's record instead of training again. Returns how many were copied."""
        copied = 0
        for plan in self.grid.datasets:
            lrs = self.chosen_lr(plan.name)
            if lrs is None:
                continue
            for cell in final_cells(self.grid, plan.name, lrs):
                key = cell.key(self.grid)
                if key in self.search_done and key not in self.cells_done:
                    record = {**self.search_done[key], "phase": "final", "from_search": True}
                    self.files.cells.append(record)
                    self.cells_done[key] = record
                    copied += 1
        return copied

    def next_cell(self) -> Cell | None:
        """Dataset by dataset: its search, then its grid (once the search is complete)."""
        for plan in self.grid.datasets:
            for cell in search_cells(self.grid):
                if cell.dataset == plan.name and self._open(cell):
                    return cell
            lrs = self.chosen_lr(plan.name)
            if lrs is not None:
                for cell in final_cells(self.grid, plan.name, lrs):
                    if self._open(cell) and cell.key(self.grid) not in self.search_done:
                        return cell
        return None

    def remaining_cost(self) -> tuple[int, float]:
        """(cells, cost units) still to train, for the progress bar. Before a dataset's lr is
        known its grid cells are counted with a stand-in lr (the cost does not depend on
        it), less the ones the search will provide."""
        todo = [c for c in search_cells(self.grid) if self._open(c)]
        keys = {c.key(self.grid) for c in todo}
        for plan in self.grid.datasets:
            known = self.chosen_lr(plan.name)
            lrs = known or dict.fromkeys(self.grid.methods, self.grid.lrs[0])
            for cell in final_cells(self.grid, plan.name, lrs):
                from_search = (cell.seed, cell.budget) == (
                    self.grid.search_seed,
                    self.grid.search_budget,
                )
                if (known is None and from_search) or cell.key(self.grid) in keys:
                    continue  # the search provides it
                if self._open(cell) and cell.key(self.grid) not in self.search_done:
                    todo.append(cell)
        return len(todo), sum(c.cost(self.grid) for c in todo)


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the report prints it)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    from importlib.metadata import version

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "peft": version("peft"),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_study(
    grid: Grid,
    files: Files,
    *,
    jobs: int = 1,
    threads: int = 1,
    api: str | None = None,
    progress: bool = True,
    study: Any = None,
) -> dict[str, Any]:
    """Run every unfinished cell of ``grid`` (or of ``study``, a planner with Study's
    interface such as round 2's); returns the session summary (also logged)."""
    from tqdm import tqdm

    started, clock = datetime.now(timezone.utc), time.monotonic()
    layout = module_layout(grid.model, grid.task)
    study = study or Study(grid, files)
    study.reuse_search()
    runner = CellRunner(grid, files, layout, api=api, threads=threads)
    todo_cells, todo_cost = study.remaining_cost()
    ran, failures = 0, []
    session = {
        "key": f"session-{started.isoformat(timespec='seconds')}",
        "grid": grid.name,
        "started": started.isoformat(timespec="seconds"),
        "jobs": jobs,
        "threads": threads,
        "api": bool(api),
        "machine": machine(),
    }

    def log_session() -> dict[str, Any]:
        """The session so far; rewritten (same key, the last line wins) after every cell, so
        a study killed outright still leaves its time on record."""
        line = {
            **session,
            "wall_s": round(time.monotonic() - clock, 1),
            "cells_run": ran,
            "cells_failed": len(failures),
            "complete": study.remaining_cost()[0] == 0 and not failures,
        }
        files.sessions.append(line)
        return line

    bar = tqdm(
        total=round(todo_cost),
        unit="u",
        disable=not progress,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}] {postfix}",
        desc=f"study {grid.name}",
    )
    bar.set_postfix_str(f"0/{todo_cells} cells")
    old_term = signal.signal(signal.SIGTERM, _raise_interrupted)
    running: dict[Future, Cell] = {}
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        with bar:
            while True:
                while len(running) < jobs and (cell := study.next_cell()) is not None:
                    study.running.add(cell.key(grid))
                    running[pool.submit(runner.run, cell)] = cell
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    cell = running.pop(future)
                    try:
                        record = future.result()
                    except CellFailed as exc:
                        study.running.discard(cell.key(grid))
                        study.failed.add(cell.key(grid))
                        failures.append(str(exc))
                        bar.write(f"FAILED {exc}")
                        continue
                    study.finish(cell, record)
                    ran += 1
                    log_session()
                    bar.update(round(cell.cost(grid)))
                    headline = HEADLINE[grid.task]
                    bar.set_postfix_str(
                        f"{ran}/{todo_cells} cells; {cell.label}: {headline} {record[headline]:.3f}"
                    )
    except (KeyboardInterrupt, Interrupted):
        runner.stop()  # SIGTERM to the running workers; their cells are not recorded
        pool.shutdown(wait=True)
        raise Interrupted(
            f"stopped after {ran} cells; rerun the same command to continue"
        ) from None
    finally:
        pool.shutdown(wait=True)
        signal.signal(signal.SIGTERM, old_term)
        summary = log_session()
    summary["failures"] = failures
    return summary


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted("SIGTERM")


# --- command line ------------------------------------------------------------------------------


def _check_presets(grid: Grid) -> str | None:
    from dora_core.contracts.presets import DATASETS, MODELS

    for preset in [MODELS[grid.model], *(DATASETS[p.name] for p in grid.datasets)]:
        if not preset.available:
            return f"{preset.kind} preset {preset.name!r} is not installed; {preset.install_hint}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="DoRA vs PEFT LoRA vs PEFT AdaLoRA at equal budgets (resumable grid).",
        epilog="Rerun the same command to continue an interrupted study; finished cells are skipped.",
    )
    parser.add_argument("--quick", action="store_true", help="the small grid (< 15 min on 2 cores)")
    parser.add_argument(
        "--round2",
        action="store_true",
        help="round 2: DEM and b(0) ablations, head_lr, lr at b(T)=2, 3 epochs (needs the full grid)",
    )
    parser.add_argument(
        "--generative",
        action="store_true",
        help="the generative grid: bbc-summary with SmolLM2-135M, ROUGE and perplexity (~2 h, --jobs 2)",
    )
    parser.add_argument("--api", metavar="URL", help="report every cell to this API (dashboard)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="cells trained at once (default: one per core)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per cell (default: cores / jobs, at least 1)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="JSONL folder")
    parser.add_argument("--runs", type=Path, default=RUNS_DIR, help="run directories folder")
    parser.add_argument(
        "--no-report", action="store_true", help="do not regenerate docs/results.md"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"study: error: {message}", file=sys.stderr)
        return 2

    if args.jobs < 1:
        return fail("--jobs: must be at least 1")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    if threads < 1:
        return fail("--threads: must be at least 1")
    if args.api and not args.api.startswith(("http://", "https://")):
        return fail(f"--api: {args.api!r} is not an http(s) URL, e.g. http://127.0.0.1:8000")
    if sum((args.quick, args.round2, args.generative)) > 1:
        return fail("--quick, --round2 and --generative are separate grids: give one")
    if args.generative:
        grid = GENERATIVE
    else:
        grid = ROUND2 if args.round2 else GRIDS["quick" if args.quick else "full"]
    problem = _check_presets(grid)
    if problem:
        return fail(problem)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    files = Files(grid, args.results, args.runs)
    study = None
    if args.round2:
        first = Files(GRIDS["full"], args.results, args.runs)
        try:
            study = Round2Study(files, first.search, first.cells)
        except ValueError as exc:
            return fail(str(exc))
    try:
        summary = run_study(
            grid,
            files,
            jobs=args.jobs,
            threads=threads,
            api=args.api,
            progress=not args.no_progress,
            study=study,
        )
    except Interrupted as exc:
        print(f"study: {exc}", file=sys.stderr)
        return 130
    print(
        f"study {grid.name}: {summary['cells_run']} cells trained in {summary['wall_s']:.0f} s; "
        f"results in {files.cells.path}"
    )
    for failure in summary["failures"]:
        print(f"study: failed: {failure}", file=sys.stderr)
    if not args.no_report:
        from bench.report import write_report

        path = write_report(args.results)
        print(f"report: {path}")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
