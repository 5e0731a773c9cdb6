"""The training worker: one job config in, a trained adapter and a telemetry stream out.

A plain PyTorch loop (tqdm bar, periodic dev evaluation, checkpoints) that
drives any of the four methods through ``methods.Method`` on any task through
``tasks.Task`` (classification, causal-lm, seq2seq). Exactness of
``--resume`` rests on three things: the data order is a pure function of
(seed, epoch, micro-batch index); every RNG is saved in the checkpoint; the
method state (tuner EMA/masks/step, AdaLoRA allocator) is saved with the
weights. The order of operations in one optimizer step is fixed:

    micro-batches (forward, loss + regulariser, backward) -> clip -> optimizer.step()
    -> scheduler.step() -> method.step() -> zero_grad -> telemetry -> eval -> checkpoint

SIGTERM (and Ctrl-C) mean cancel: finish the step, checkpoint, report
``cancelled``, exit. An exception reports ``failed`` with the traceback.
A worker whose API has taken nothing for ``Telemetry.orphan_timeout``
seconds (down, or another API instance answering at its address) is an
orphan: it checkpoints, journals a ``cancelled`` event and stops, resumable,
its spool kept, instead of training on for nobody.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dora_core.contracts.hosts import dashboard_run_url
from dora_core.contracts.job import JobConfig, JobConfigError, worker_processes
from dora_core.contracts.rundir import ADAPTER_DIR, JOB_FILE, LOG_FILE, RESULT_FILE, SPLIT_FILE
from dora_core.contracts.wire import DEFAULT_ORPHAN_TIMEOUT_S
from dora_core.reporting import report_event, report_state
from dora_core.worker.data import BatchPlan
from dora_core.worker.gendata import GenDataError
from dora_core.worker.models import enable_checkpointing, load_tokenizer
from dora_core.worker.telemetry import NullReporter, Reporter
from dora_core.worker.telemetry.trackers import Trackers
from dora_core.worker.train import checkpoint, ddp
from dora_core.worker.train.generation import clip_sample, write_samples
from dora_core.worker.train.methods import Method, build_method
from dora_core.worker.train.plan import Plan, default_run_dir, device_kind, prepare
from dora_core.worker.train.precision import Amp, keep_trainable_fp32
from dora_core.worker.train.summary import summary_lines
from dora_core.worker.train.tasks import Task, build_task

log = logging.getLogger("dora.train")


@dataclass
class Telemetry:
    """Where the worker reports: off, or an API URL (+ the launcher's run id, token and
    API instance id)."""

    api_url: str | None = None
    run_id: int | None = None
    token: str | None = None
    instance: str | None = None  # the API instance the run belongs to (DORA_API_INSTANCE)
    report_every: int | None = None  # overrides the job's report_every
    close_timeout: float = 15.0  # seconds to wait for the API at the end before leaving a spool
    # Stop (checkpointed, resumable) once the API has taken nothing for this long.
    orphan_timeout: float = DEFAULT_ORPHAN_TIMEOUT_S
    # The API cannot read the run dir (a cluster node): upload the final adapter to it.
    upload_adapter: bool = False


@dataclass
class Outcome:
    status: str  # "completed" / "cancelled" / "orphaned"
    run_dir: Path
    result: dict = field(default_factory=dict)


class _StopFlag:
    """Set by SIGTERM / SIGINT; the loop checks it between optimizer steps."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def pick_device(device: str) -> torch.device:
    """The job's ``device`` field (auto / cpu / cuda / mps) as a torch device for this rank:
    under torchrun each rank takes the GPU of its local rank (the launcher's
    CUDA_VISIBLE_DEVICES lists the job's own). A device the machine lacks is refused by
    ``plan.check_device``, before anything runs on it."""
    kind = device_kind(device)
    return torch.device("cuda", ddp.local_rank()) if kind == "cuda" else torch.device(kind)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each message, not the stream it was at the
    first job of the process (notebooks, pytest's capture and tools swap it between jobs)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _setup_logging(run_dir: Path | None) -> logging.Handler | None:
    logger = logging.getLogger("dora")
    logger.setLevel(logging.INFO)
    if not any(getattr(h, "_dora_console", False) for h in logger.handlers):
        console = _CurrentStderr()
        console.setFormatter(logging.Formatter("%(message)s"))
        console._dora_console = True  # type: ignore[attr-defined]
        logger.addHandler(console)
    if run_dir is None:
        return None
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return handler


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _shared_run_dir(job: JobConfig, run_dir: Path | None) -> Path:
    """Every rank must use rank 0's directory (the default one carries a timestamp)."""
    chosen = [str(run_dir or job.output_dir or default_run_dir(job))]
    if ddp.active():
        torch.distributed.broadcast_object_list(chosen, src=0)
    return Path(chosen[0])


class Worker:
    """One training run: built from a Plan, driven by ``run()``."""

    def __init__(
        self,
        plan: Plan,
        device: torch.device,
        reporter: Reporter | NullReporter,
        report_every: int,
        orphan_timeout: float = DEFAULT_ORPHAN_TIMEOUT_S,
    ):
        self.plan = plan
        self.device = device
        self.reporter = reporter
        self.report_every = report_every
        self.orphan_timeout = orphan_timeout
        self.main = ddp.is_main()
        self.step = 0
        self.best: dict | None = None
        self.last_eval: dict[str, float] | None = None
        self.started = time.monotonic()

        self.tokenizer = load_tokenizer(plan.source, plan.chat_template)
        try:
            self.task: Task = build_task(plan, self.tokenizer)
        except GenDataError as exc:
            raise JobConfigError([(exc.field, exc.message)]) from None
        self.train_data, self.dev_data = self.task.train, self.task.dev
        torch.manual_seed(plan.seed)  # the head and the adapters start from the seed
        self.method: Method = build_method(self.task.load_model(), plan.method)
        keep_trainable_fp32(self.method.model)  # only the frozen base may be low precision
        if plan.gradient_checkpointing:
            enable_checkpointing(self.method.model)
        self.method.model.to(device)
        self.amp = Amp(plan.precision, device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.wrapped: nn.Module = self.method.model

    # --- set-up -------------------------------------------------------------------------
    def _build_optimizer(self) -> None:
        from transformers import get_scheduler

        optim = self.plan.optim
        self.optimizer = torch.optim.AdamW(
            self.method.param_groups(optim.lr, optim.head_lr), weight_decay=optim.weight_decay
        )
        self.scheduler = get_scheduler(
            optim.scheduler,
            self.optimizer,
            num_warmup_steps=optim.warmup_steps,
            num_training_steps=self.plan.total_steps,
        )

    def restore(self, state: dict | None) -> None:
        """Load a checkpoint (or start fresh): method first, then optimizer, scheduler, RNG."""
        if state is not None:
            self.method.load_state_dict(state["method"])
        self._build_optimizer()
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.amp.load_state_dict(state.get("scaler"))
            self.step = int(state["step"])
            self.best = state.get("best")
            self.last_eval = state.get("last_eval")
            checkpoint.set_rng_state(state["rng"])
        self._wrap()

    def _wrap(self) -> None:
        if ddp.active():
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.method.model, device_ids=ids)

    def _rewrap(self) -> None:
        """After compaction: DDP's gradient buckets cannot follow the new shapes."""
        if ddp.active():
            del self.wrapped
            gc.collect()
            self._wrap()

    # --- one optimizer step -------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[int, list[int]]]:
        lengths = tuple(len(ids) for ids in self.train_data.input_ids)
        plan = BatchPlan(
            len(lengths),
            self.plan.batch_size,
            self.plan.seed,
            ddp.world_size(),
            ddp.rank(),
            lengths,
        )
        return plan.batches(start=self.step * self.plan.grad_accum)

    def _train_step(self, batches: Iterator[tuple[int, list[int]]]) -> dict[str, float]:
        accum = self.plan.grad_accum
        totals = {"loss": 0.0, "task_loss": 0.0, "dem": 0.0}
        self.wrapped.train()
        for k in range(accum):
            _, indices = next(batches)
            batch = {
                key: value.to(self.device)
                for key, value in self.task.collate(self.train_data, indices).items()
            }
            last = k == accum - 1
            sync = contextlib.nullcontext() if last or not ddp.active() else self.wrapped.no_sync()
            with sync:
                with self.amp.autocast():  # the forward only; adapters and head stay fp32
                    task = self.wrapped(**batch).loss  # the model's own loss on its labels
                reg = self.method.regularization()
                loss = task + reg if reg is not None else task
                self.amp.backward(loss / accum)
            totals["loss"] += loss.item() / accum
            totals["task_loss"] += task.item() / accum
            totals["dem"] += (reg.item() if reg is not None else 0.0) / accum
        params = [p for p in self.method.parameters() if p.grad is not None]
        clip = self.plan.optim.grad_clip
        limit = clip if clip is not None else float("inf")
        self.amp.unscale(self.optimizer)  # fp16: clip the true gradients
        grad_norm = torch.nn.utils.clip_grad_norm_(params, limit)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        self.amp.step(self.optimizer)
        self.scheduler.step()
        self.step += 1
        result = self.method.step(self.step, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        if result.compacted:
            self._rewrap()
        totals.update(lr=lr, grad_norm=float(grad_norm))
        if reg is None:  # the method has no regulariser: no "dem" curve
            del totals["dem"]
        totals["event"] = result.event  # type: ignore[assignment]
        return totals

    # --- reporting ------------------------------------------------------------------------
    def register(self) -> None:
        self.reporter.register(self.method.register_body())

    def report_state(self, step: int, force_scores: bool = False) -> None:
        if self.main:
            report_state(self.reporter, self.method, step, force_scores)

    def _report_step(self, scalars: dict) -> None:
        step, event = self.step, scalars.pop("event")
        due = step % self.report_every == 0 or step == self.plan.total_steps
        if due:
            self.reporter.scalars(step, scalars)
        if event is not None or due:
            self.report_state(step, force_scores=event is not None or step == self.plan.total_steps)
        if event is not None and self.main:
            report_event(self.reporter, self.method, step, event)

    def _evaluate(self) -> dict[str, float]:
        final = self.step == self.plan.total_steps
        with self.amp.autocast():  # dev loss and generation run as training does
            result = self.task.evaluate(self.method.model, self.device, self.step, final)
        metrics = result.metrics
        self.last_eval = metrics
        key = self.task.best_key
        if self.task.improved(metrics, self.best):
            self.best = {"key": f"eval/{key}", "value": metrics[key], "step": self.step}
        self.reporter.scalars(self.step, {f"eval/{k}": v for k, v in metrics.items()})
        self.reporter.event(self.step, "eval", result.summary, metrics)
        if result.samples and self.main:
            write_samples(self.plan.run_dir, self.step, result.samples)
            self.reporter.event(
                self.step,
                "samples",
                f"{len(result.samples)} generated dev samples",
                {"samples": [clip_sample(row) for row in result.samples]},
            )
        if self.main:
            log.info("step %d/%d: dev %s", self.step, self.plan.total_steps, result.summary)
        return metrics

    def save_checkpoint(self) -> Path | None:
        path = None
        if self.main:
            payload = {
                "method": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.amp.state_dict(),  # fp16's loss scale (None otherwise)
                "rng": checkpoint.rng_state(),
                "position": {"micro_batches": self.step * self.plan.grad_accum},
                "total_steps": self.plan.total_steps,
                "best": self.best,
                "last_eval": self.last_eval,
            }
            self.reporter.sync()  # the journal must reach this step before the checkpoint does
            path = checkpoint.save(self.plan.run_dir, self.step, payload)
            self.reporter.event(self.step, "checkpoint", f"saved {path.name}", {"path": str(path)})
        ddp.barrier()
        return path

    # --- the run ---------------------------------------------------------------------------
    def run(self, stop: _StopFlag, progress: bool) -> Outcome:
        plan, total = self.plan, self.plan.total_steps
        batches = self._batches()
        bar = tqdm(
            total=total,
            initial=self.step,
            desc=f"{self.method.name} {Path(plan.record['model']).name}",
            unit="step",
            disable=not (progress and self.main),
            dynamic_ncols=True,
        )
        last_checkpoint = self.step
        # Log lines (evaluations, checkpoints) go through tqdm so they do not break the bar.
        console = [logging.getLogger("dora")]
        redirect = logging_redirect_tqdm(console) if progress else contextlib.nullcontext()
        with bar, redirect:
            while self.step < total:
                scalars = self._train_step(batches)
                self._report_step(scalars)
                if self.step % plan.eval_every == 0 or self.step == total:
                    self._evaluate()
                if self.step % plan.checkpoint_every == 0 and self.step < total:
                    self.save_checkpoint()
                    last_checkpoint = self.step
                budget = self.method.budget(self.step)
                bar.set_postfix(
                    loss=f"{scalars['loss']:.3f}",
                    **({"live": budget["live"]} if budget else {}),
                    **(self._bar_metric() if self.last_eval else {}),
                    refresh=False,
                )
                bar.update(1)
                orphaned = self.main and self.reporter.unreachable_for() > self.orphan_timeout
                if ddp.broadcast_flag(stop.signal is not None or orphaned) and self.step < total:
                    if ddp.broadcast_flag(orphaned):
                        return self._orphaned(last_checkpoint)
                    return self._cancel(stop.signal or "signal", last_checkpoint)
        return self._finish()

    def _bar_metric(self) -> dict[str, str]:
        key = self.task.best_key
        value = self.last_eval.get(key) if self.last_eval else None
        return {key: f"{value:.3f}"} if value is not None else {}

    def _orphaned(self, last_checkpoint: int) -> Outcome:
        """Nobody has taken this run's telemetry for ``orphan_timeout`` s: stop, resumable."""
        if last_checkpoint != self.step:
            self.save_checkpoint()
        reporter = self.reporter
        spool = getattr(getattr(reporter, "journal", None), "spool_path", "the spool")
        message = (
            f"stopped at step {self.step}: the API has taken no telemetry for "
            f"{reporter.unreachable_for():.0f} s (orphan timeout {self.orphan_timeout:g} s; "
            f"last error: {getattr(reporter, 'last_error', None)}); the checkpoint is saved "
            f"and the unsent telemetry waits in {spool}. Once the API is back, resume with "
            f"`DORA_API_URL={getattr(reporter, 'api_url', None)} dora train --resume "
            f"{self.plan.run_dir}`"
        )
        if self.main:
            log.error(message)
        self.reporter.event(self.step, "cancelled", message)
        return Outcome("orphaned", self.plan.run_dir, {"step": self.step})

    def _cancel(self, why: str, last_checkpoint: int) -> Outcome:
        if last_checkpoint != self.step:
            self.save_checkpoint()
        message = f"cancelled by {why} at step {self.step}; resume with `dora train --resume {self.plan.run_dir}`"
        if self.main:
            log.info(message)
        self.reporter.event(self.step, "cancelled", message)
        return Outcome("cancelled", self.plan.run_dir, {"step": self.step})

    def _dashboard_url(self) -> str | None:
        """The run's dashboard page when it reports: DORA_DASH_URL, or make run's default
        (port 8050) when the API is on this machine."""
        run_id = getattr(getattr(self.reporter, "journal", None), "run_id", None)
        api = getattr(self.reporter, "api_url", None)
        if run_id is None or api is None:
            return None
        return dashboard_run_url(api, run_id, os.environ.get("DORA_DASH_URL"))

    def _finish(self) -> Outcome:
        metrics = self.last_eval if self.last_eval is not None else self._evaluate()
        result: dict[str, Any] = {
            "status": "completed",
            "method": self.method.name,
            "task": self.task.name,
            "model": self.plan.record["model"],
            "dataset": self.plan.record["dataset"],
            "total_steps": self.plan.total_steps,
            "metrics": metrics,
            "best": self.best,
            "params": self.method.param_counts(),
            "train_size": len(self.train_data),
            "dev_size": len(self.dev_data),
            "wall_time_s": round(time.monotonic() - self.started, 2),
        }
        result.update(self.method.result_extras())
        if self.main:
            self.method.save_final(self.plan.run_dir, self.tokenizer)
            _write_json(self.plan.run_dir / RESULT_FILE, result)
            adapter = self.plan.run_dir / ADAPTER_DIR
            lines = summary_lines(
                result,
                self.method.modules(),
                self.plan.run_dir,
                adapter if adapter.is_dir() else None,
                self._dashboard_url(),
            )
            for line in lines:
                log.info("%s", line)
            if adapter.is_dir():  # before "finished": a completed run's adapter is there
                self.reporter.upload_adapter(adapter, self.step)
        ddp.barrier()
        key = self.task.best_key
        shown = f"dev {key} {metrics[key]:.4f}" if key in metrics else "finished"
        self.reporter.event(self.step, "finished", shown, result)
        return Outcome("completed", self.plan.run_dir, result)


def _make_reporter(
    job: JobConfig, run_dir: Path, telemetry: Telemetry, trackers: bool = False
) -> Reporter | NullReporter:
    """Rank 0's reporter; ``trackers``: also to the job's ``report_to`` (a run that trains)."""
    if not ddp.is_main():
        return NullReporter()
    config = job.model_dump(mode="json")
    return Reporter(
        run_dir,
        telemetry.api_url,
        run_id=telemetry.run_id,
        token=telemetry.token,
        instance=telemetry.instance,
        run_name=job.display_name,
        config=config,
        trackers=Trackers(job.report_to, run_dir, job.display_name, config) if trackers else None,
        upload_adapter=telemetry.upload_adapter,
    )


def train(
    job: JobConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    telemetry: Telemetry | None = None,
    progress: bool | None = None,
    train_data: Any | None = None,
    dev_data: Any | None = None,
) -> Outcome:
    """Run one job (the same as `dora train`). Raises JobConfigError before training on a bad job.

    ``train_data`` / ``dev_data``: ``datasets.Dataset`` objects to train and evaluate on
    instead of reading ``job.dataset`` (then only the run's name); without ``dev_data``
    the dev split is held out of ``train_data`` by the seeded split. A resume needs them
    again.
    """
    if dev_data is not None and train_data is None:
        raise JobConfigError([("dev_data", "given without train_data; pass both, or neither")])
    telemetry = telemetry or Telemetry()
    progress = sys.stderr.isatty() if progress is None else progress
    device = pick_device(job.device)
    ddp.setup(device)
    handler = None
    reporter: Reporter | NullReporter = NullReporter()
    try:
        run_dir = _shared_run_dir(job, Path(run_dir) if run_dir else None)
        if job.output_dir != str(run_dir):
            job = job.model_copy(update={"output_dir": str(run_dir)})
        if resume and (run_dir / RESULT_FILE).is_file():
            # Nothing left to train; only telemetry the API never acknowledged.
            _setup_logging(None)
            log.info(
                "%s already finished; replaying telemetry the API has not acknowledged", run_dir
            )
            reporter = _make_reporter(job, run_dir, telemetry)
            result = json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8"))
            return Outcome("completed", run_dir, result)
        try:
            plan = prepare(
                job,
                run_dir,
                resume=resume,
                world_size=ddp.world_size(),
                report_every=telemetry.report_every,
                given=None if train_data is None else (train_data, dev_data),
            )
        except JobConfigError as exc:
            if telemetry.run_id is not None and ddp.is_main():
                # Launched by the API: the dashboard should show why it never started.
                run_dir.mkdir(parents=True, exist_ok=True)
                reporter = _make_reporter(job, run_dir, telemetry)
                reporter.event(0, "failed", str(exc), {"traceback": str(exc)}, force=True)
            raise
        if ddp.is_main():
            run_dir.mkdir(parents=True, exist_ok=True)
            handler = _setup_logging(run_dir)
            _write_json(run_dir / JOB_FILE, plan.record)
            _write_json(run_dir / SPLIT_FILE, plan.split.record)
        else:
            _setup_logging(None)
        ddp.barrier()
        reporter = _make_reporter(job, run_dir, telemetry, trackers=True)
        return _run(plan, device, reporter, resume, progress, telemetry.orphan_timeout)
    except (JobConfigError, KeyboardInterrupt):
        raise
    except BaseException as exc:
        step = getattr(exc, "_dora_step", 0)
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        reporter.event(step, "failed", message, {"traceback": traceback.format_exc()}, force=True)
        raise
    finally:
        if not reporter.close(timeout=telemetry.close_timeout):
            log.warning(
                "telemetry not fully delivered (%s); the rest waits in %s/telemetry-spool.jsonl "
                "and goes out with `dora train --resume`",
                getattr(reporter, "last_error", None),
                run_dir,
            )
        if handler is not None:
            logging.getLogger("dora").removeHandler(handler)
            handler.close()
        ddp.teardown()


def _placement_line(plan: Plan, device: torch.device) -> str:
    """Where and how the run trains (one log line); says so when the process count differs
    from what the job asks of a launcher (``dora train`` runs as it was started)."""
    world = ddp.world_size()
    line = (
        f"training on {device.type} ({world} process{'es' if world > 1 else ''}), precision "
        f"{plan.precision}, gradient checkpointing {'on' if plan.gradient_checkpointing else 'off'}"
    )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device.type == "cuda" and visible is not None:
        line += f", CUDA_VISIBLE_DEVICES={visible}"
    wanted = worker_processes(plan.record)
    if wanted != world:
        line += (
            f"; the job asks a launcher for {wanted} process{'es' if wanted > 1 else ''} "
            f"(started by hand: torchrun --nproc_per_node {wanted})"
        )
    return line


def _run(
    plan: Plan,
    device: torch.device,
    reporter: Reporter | NullReporter,
    resume: bool,
    progress: bool,
    orphan_timeout: float = DEFAULT_ORPHAN_TIMEOUT_S,
) -> Outcome:
    worker = Worker(plan, device, reporter, plan.report_every, orphan_timeout)
    state = checkpoint.load_latest(plan.run_dir) if resume else None
    try:
        worker.restore(state)
        worker.register()
        if state is None:
            reporter.event(
                0,
                "started",
                f"{plan.method.name} on {plan.record['model']} / {plan.record['dataset']}: "
                f"{plan.total_steps} steps",
            )
            worker.report_state(0, force_scores=True)
        else:
            reporter.event(
                worker.step, "log", f"resumed from the checkpoint at step {worker.step}", force=True
            )
        if ddp.is_main():
            log.info(
                "%s: %d train / %d dev examples, %d optimizer steps, run dir %s",
                plan.name,
                len(worker.train_data),
                len(worker.dev_data),
                plan.total_steps,
                plan.run_dir,
            )
            log.info("%s", _placement_line(plan, device))
        with _StopFlag() as stop:
            return worker.run(stop, progress)
    except BaseException as exc:
        exc._dora_step = worker.step  # type: ignore[attr-defined]
        raise
