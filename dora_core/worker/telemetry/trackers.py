"""The trackers people already use: the run's records also go to TensorBoard and MLflow.

The job field ``report_to`` names them. The reporter hands ``Trackers`` the
module register and every batch it journals (the records that went into
``metrics.jsonl``, shaped as the API's batch body), on its background thread,
so a slow tracker never slows a training step and a resumed run logs nothing
twice. ``Trackers`` turns the records into what a tracker takes, once, and
hands that to each one:

- every scalar of the run under its own key (``loss``, ``lr``, ``eval/accuracy``...);
- ``budget/target``, ``budget/live``, ``budget/b`` from the budget records;
- ``live_rank/<module type>``: the mean live components of that type's modules,
  from each scores record (what ``dora train``'s summary prints at the end);
- the rank heatmap as an image at each pruning event and at the end;
- the end of the run (finished, failed, cancelled).

A tracker that fails (its package missing, a directory it cannot write, a
write that raises later) is warned about once and is off for the rest of the
run; training goes on, and so do the other trackers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dora_core.contracts.rankgrid import rank_matrix
from dora_core.contracts.rundir import (
    ADAPTER_DIR,
    HEATMAP_FILE,
    RESULT_FILE,
    TENSORBOARD_DIR,
    TRACKERS_FILE,
)
from dora_core.contracts.wire import FINAL_EVENT_STATUS
from dora_core.worker.telemetry import heatmap
from dora_core.worker.train.summary import rank_by_type

log = logging.getLogger("dora.trackers")

TRACKER_NAMES = ("tensorboard", "mlflow")
PRUNING_EVENTS = ("prune", "mask_frozen")
INSTALL_HINT = "pip install 'dora-toolkit[trackers]'"


class Tracker(Protocol):
    """What one tracker does with a run; every call may raise (``Trackers`` guards them)."""

    where: str  # one line for the log: where to look at the run

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def image(self, step: int, rgb: np.ndarray) -> None:
        """The rank heatmap at a pruning event (RGB, H x W x 3 uint8)."""

    def end(self, status: str, final: np.ndarray | None) -> None:
        """The run's final event: ``finished`` / ``failed`` / ``cancelled``, with the last heatmap."""

    def flush(self) -> None:
        """The end of one journaled batch."""

    def close(self) -> None: ...


# --- the two trackers ------------------------------------------------------------------


class TensorBoardTracker:
    """Event files in ``<run dir>/tensorboard`` (``tensorboard --logdir <run dir>``)."""

    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        self.where = f"event files in {run_dir / TENSORBOARD_DIR} (tensorboard --logdir {run_dir})"
        text = json.dumps(config, indent=2)
        self.writer.add_text("job", "    " + text.replace("\n", "\n    "), 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def image(self, step: int, rgb: np.ndarray) -> None:
        self.writer.add_image("rank_heatmap", rgb, step, dataformats="HWC")

    def end(self, status: str, final: np.ndarray | None) -> None:
        self.writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
MLFLOW_BATCH = 1000  # metrics per log_batch call (MLflow's limit)


class MlflowTracker:
    """One MLflow run at ``$MLFLOW_TRACKING_URI`` (in ``$MLFLOW_EXPERIMENT_NAME``, else the
    default experiment): params = the job config, metrics, and at the end the adapter
    folder, ``result.json`` and the rank heatmap PNG as artifacts. The run's id is kept in
    the run directory, so ``dora train --resume`` continues the same MLflow run."""

    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any]):
        from mlflow.tracking import MlflowClient

        self.run_dir = run_dir
        self.client = MlflowClient()
        self.ended = False
        self.pending: list[Any] = []
        self.run_id = self._continued() or self._create(run_name, config)
        self.where = f"run {self.run_id} at {self.client.tracking_uri}"

    def _continued(self) -> str | None:
        """The MLflow run a resumed run started, when it is still in this tracking store."""
        path = self.run_dir / TRACKERS_FILE
        kept = (
            json.loads(path.read_text(encoding="utf-8")).get("mlflow", {}) if path.is_file() else {}
        )
        if kept.get("tracking_uri") != self.client.tracking_uri or not kept.get("run_id"):
            return None
        from mlflow.exceptions import MlflowException

        try:
            self.client.update_run(kept["run_id"], status="RUNNING")
        except MlflowException:
            return None
        return kept["run_id"]

    def _create(self, run_name: str, config: dict[str, Any]) -> str:
        from mlflow.entities import Param

        experiment = os.environ.get("MLFLOW_EXPERIMENT_ID")
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if experiment is None and name:
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found else self.client.create_experiment(name)
        run = self.client.create_run(
            experiment or "0", run_name=run_name, tags={"dora.run_dir": str(self.run_dir)}
        )
        params = [Param(key, _param(value)) for key, value in config.items()]
        self.client.log_batch(run.info.run_id, params=params)
        state = {"mlflow": {"tracking_uri": self.client.tracking_uri, "run_id": run.info.run_id}}
        (self.run_dir / TRACKERS_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")
        return run.info.run_id

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(key, float(v), now, step) for key, v in values.items()]

    def image(self, step: int, rgb: np.ndarray) -> None:
        """Only the final heatmap becomes an artifact (``end``)."""

    def flush(self) -> None:
        while self.pending:
            chunk, self.pending = self.pending[:MLFLOW_BATCH], self.pending[MLFLOW_BATCH:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def end(self, status: str, final: np.ndarray | None) -> None:
        self.flush()
        if status == "finished":
            if final is not None:
                path = self.run_dir / HEATMAP_FILE
                path.write_bytes(heatmap.png_bytes(final))
                self.client.log_artifact(self.run_id, str(path))
            if (self.run_dir / RESULT_FILE).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / RESULT_FILE))
            if (self.run_dir / ADAPTER_DIR).is_dir():
                self.client.log_artifacts(self.run_id, str(self.run_dir / ADAPTER_DIR), ADAPTER_DIR)
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])
        self.ended = True

    def close(self) -> None:
        self.flush()
        if not self.ended:  # stopped without a final event (the process is going away)
            self.client.set_terminated(self.run_id, "KILLED")
            self.ended = True


def _param(value: Any) -> str:
    """A job field as an MLflow param (a string): lists and mappings as JSON."""
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


FACTORIES: dict[str, Callable[[Path, str, dict[str, Any]], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MlflowTracker,
}


# --- the fan-out the reporter calls ------------------------------------------------------


class Trackers:
    """The run's trackers behind one guard; opened on first use, on the reporter's thread."""

    def __init__(
        self,
        names: Sequence[str],
        run_dir: str | Path,
        run_name: str = "run",
        config: dict[str, Any] | None = None,
        factories: dict[str, Callable[[Path, str, dict[str, Any]], Tracker]] | None = None,
    ):
        self.names = list(dict.fromkeys(names))
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.config = config or {}
        self.factories = factories or FACTORIES
        self.active: dict[str, Tracker] = {}
        self.opened = False
        self.modules: list[dict[str, Any]] = []
        self.masks: dict[str, list[int]] | None = None
        self.mask_step: int | None = None
        self.images = True  # off after one failed rendering

    @classmethod
    def none(cls) -> Trackers:
        return cls([], ".")

    # --- the reporter's calls ---
    def register(self, body: dict[str, Any]) -> None:
        """The module register: names, layers and types lay out the heatmap."""
        self.modules = list(body.get("modules") or [])
        self._open()

    def batch(self, body: dict[str, Any]) -> None:
        """One journaled batch (``scores``, ``budget``, ``scalars``, ``events`` lists)."""
        self._open()
        if not self.active:
            return
        for step, kind, record in _in_step_order(body):
            if kind == "scores":
                self.masks, self.mask_step = record["masks"], step
                ranks = self._live_by_type()
                if ranks:
                    self._each("scalars", step, {f"live_rank/{t}": r for t, r in ranks.items()})
            elif kind == "budget":
                values = {f"budget/{k}": float(record[k]) for k in ("target", "live", "b")}
                self._each("scalars", step, values)
            elif kind == "scalars":
                self._each("scalars", step, record["values"])
            elif record["kind"] in PRUNING_EVENTS:
                rgb = self._heatmap(step)
                if rgb is not None:
                    self._each("image", step, rgb)
            elif record["kind"] in FINAL_EVENT_STATUS:
                final = self._heatmap(step) if record["kind"] == "finished" else None
                if final is not None:
                    self._each("image", step, final)
                self._each("end", record["kind"], final)
        self._each("flush")

    def close(self) -> None:
        self._each("close")
        self.active.clear()

    # --- helpers ---
    def _open(self) -> None:
        if self.opened:
            return
        self.opened = True
        for name in self.names:
            try:
                tracker = self.factories[name](self.run_dir, self.run_name, self.config)
            except ImportError as exc:
                log.warning(
                    "report_to %s is off: %s is not installed (%s)",
                    name,
                    exc.name or name,
                    INSTALL_HINT,
                )
            except Exception as exc:
                log.warning("report_to %s is off: it could not start: %s", name, _oneline(exc))
            else:
                self.active[name] = tracker
                log.info("report_to %s: %s", name, getattr(tracker, "where", "started"))

    def _each(self, verb: str, *args: Any) -> None:
        for name, tracker in list(self.active.items()):
            try:
                getattr(tracker, verb)(*args)
            except Exception as exc:
                log.warning(
                    "report_to %s is off for the rest of this run: %s failed: %s",
                    name,
                    verb,
                    _oneline(exc),
                )
                del self.active[name]
                if verb != "close":
                    with contextlib.suppress(Exception):
                        tracker.close()

    def _live_by_type(self) -> dict[str, float]:
        if not self.modules or self.masks is None:
            return {}
        return rank_by_type({n: sum(m) for n, m in self.masks.items()}, self.modules)

    def _heatmap(self, step: int) -> np.ndarray | None:
        """The rank heatmap at the latest scores at or before ``step``; None when off."""
        if not self.images or not self.modules or self.masks is None:
            return None
        matrix = rank_matrix(self.modules, self.masks, self.mask_step)
        if not matrix["layers"]:
            return None
        r_max = max((m["rank"] for m in self.modules), default=1)
        title = f"live components per module, step {step} (r' = {r_max})"
        try:
            return heatmap.render(matrix, r_max, title)
        except Exception as exc:  # Pillow missing or broken: scalars still go out
            self.images = False
            hint = f" ({INSTALL_HINT})" if isinstance(exc, ImportError) else ""
            log.warning("rank heatmap images are off: %s%s", _oneline(exc), hint)
            return None


def _in_step_order(body: dict[str, Any]) -> list[tuple[int, str, dict[str, Any]]]:
    """A batch's records by step; at one step the data before the events, so that an event
    sees the scores of its own step."""
    items: list[tuple[int, int, str, dict[str, Any]]] = []
    for key, kind in (("scores", "scores"), ("budget", "budget"), ("scalars", "scalars")):
        items += [(r["step"], 0, kind, r) for r in body.get(key, [])]
    items += [(r["step"], 1, "event", r) for r in body.get("events", [])]
    items.sort(key=lambda item: (item[0], item[1]))
    return [(step, kind, record) for step, _, kind, record in items]


def _oneline(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
