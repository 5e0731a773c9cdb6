"""DoRA inside ``transformers.Trainer``: a callback that steps the tuner, and a Trainer that adds R.

    tuner = inject(model, DoraConfig(total_steps=args.max_steps, target_rank=8))
    trainer = DoraTrainer(model=model, args=args, train_dataset=..., tuner=tuner)
    trainer.train()
    tuner.export_peft("adapter")

``DoraCallback`` calls ``tuner.step(optimizer)`` once per optimizer step
(Trainer's ``on_step_end``), so scores and pruning follow the optimizer,
not the micro-batches; with a ``Reporter`` it streams the same telemetry as
``dora train``. ``DoraTrainer`` adds the DEM regulariser to the loss; with
your own Trainer subclass, add the callback and ``tuner.regularization()``
yourself. On every Trainer checkpoint the tuner state goes to
``checkpoint-N/dora/``; to resume, ``tuner.load(that folder)`` before
``trainer.train(resume_from_checkpoint=...)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from dora_core.reporting import TunerTelemetry, report_event, report_state
from dora_core.tuner import DoraTuner

TUNER_DIR = "dora"


class DoraCallback(TrainerCallback):
    """Steps a DoraTuner from Trainer and, optionally, reports telemetry."""

    def __init__(self, tuner: DoraTuner, reporter: Any = None, report_every: int = 1):
        self.tuner = tuner
        self.method = TunerTelemetry(tuner)
        self.reporter = reporter
        self.report_every = report_every

    def on_train_begin(self, args, state, control, **kwargs):
        total = self.tuner.config.total_steps
        if state.max_steps and state.max_steps != total:
            raise ValueError(
                f"total_steps: DoraConfig has {total} but the Trainer runs {state.max_steps} "
                f"optimizer steps; inject with DoraConfig(total_steps={state.max_steps})"
            )
        if self.reporter is not None and state.is_world_process_zero:
            self.reporter.register(self.method.register_body())
            step = self.tuner.global_step
            self.reporter.event(step, "started", f"Trainer run: {total} steps")
            report_state(self.reporter, self.method, step, force_scores=True)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        info = self.tuner.step(optimizer)
        if self.reporter is None or not state.is_world_process_zero:
            return
        step = info.step
        due = step % self.report_every == 0 or step == self.tuner.config.total_steps
        if info.event is not None or due:
            report_state(self.reporter, self.method, step, force_scores=info.event is not None)
        if info.event is not None:
            report_event(self.reporter, self.method, step, info.event)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.reporter is None or not state.is_world_process_zero or not logs:
            return
        values = {}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                name = "eval/" + key[5:] if key.startswith("eval_") else key
                values[name.replace("learning_rate", "lr")] = float(value)
        self.reporter.scalars(state.global_step, values)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}" / TUNER_DIR
            self.tuner.save(folder)

    def on_train_end(self, args, state, control, **kwargs):
        """Report ``finished`` and flush: the reporter is closed when training ends."""
        if self.reporter is not None and state.is_world_process_zero:
            self.reporter.event(state.global_step, "finished", "Trainer run finished")
            self.reporter.close()


class DoraTrainer(Trainer):
    """A Trainer whose loss includes eta * R and which steps ``tuner`` (adds a DoraCallback)."""

    def __init__(
        self,
        *args: Any,
        tuner: DoraTuner,
        reporter: Any = None,
        report_every: int = 1,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.tuner = tuner
        self.add_callback(DoraCallback(tuner, reporter, report_every))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        loss = loss + self.tuner.regularization()
        return (loss, outputs) if return_outputs else loss
